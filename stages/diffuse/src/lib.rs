//! Diffusion: `model.diffuse` runs a noise-prediction model (a diffusers-style UNet or any ONNX
//! model with sample / timestep / condition inputs) inside a scheduler loop: DDPM, DDIM, Euler,
//! Euler ancestral, DPM-Solver++ (2M), LMS, Heun, UniPC and PNDM (PLMS steps, as SD v1 configures it),
//! following diffusers' equations, with classifier-free guidance batched as one run per step. A
//! diffusers/optimum ONNX folder gives the model, the scheduler's config and the latents' scale.

mod bind;
mod denoise;
mod params;
pub mod scheduler;
mod stage;

use pipeline::Plugin;

pub use stage::ModelDiffuse;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(ModelDiffuse)]
}
