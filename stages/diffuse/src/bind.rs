//! Binding `model.diffuse` to its model and its input: the model's input and output names for
//! each role ([`Names`]), and the input columns checked against the params and the model, which
//! gives the output schema ([`bind`]).

use arrow::datatypes::{DataType, SchemaRef};
use pipe_runtime::{Model, Signature, TensorElementType};
use pipeline::tensor::{tensor_field, tensor_shape};
use pipeline::{Error, Result};

use crate::params::{DiffuseParams, Uncond};

/// The model's input and output names and element types.
#[derive(Debug)]
pub(crate) struct Names {
    pub(crate) sample: String,
    pub(crate) timestep: String,
    pub(crate) timestep_type: TensorElementType,
    pub(crate) timestep_rank: usize,
    pub(crate) condition: Option<(String, TensorElementType)>,
    /// The condition input's dimensions (-1 where dynamic), batch first.
    pub(crate) condition_dims: Vec<i64>,
    pub(crate) output: String,
}

impl Names {
    /// The model's inputs for the sample, timestep and condition roles (`inputs` maps them to
    /// other names), checked against the params, and the output read.
    pub(crate) fn resolve(p: &DiffuseParams, model: &Model) -> Result<Names> {
        for key in p.inputs.keys() {
            if !["sample", "timestep", "condition"].contains(&key.as_str()) {
                return Err(Error::config("inputs", format!("unknown role `{key}`"))
                    .with_hint("the roles are sample, timestep and condition"));
            }
        }
        let all = || {
            model
                .inputs
                .iter()
                .map(|s| format!("{} ({} {})", s.name, s.element_name(), s.shape_text()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input = |role: &str, default: &str| -> Result<&Signature> {
            let name = p.inputs.get(role).map_or(default, String::as_str);
            model.input(name).ok_or_else(|| {
                Error::config("inputs", format!("the model has no input `{name}` for the {role}"))
                    .with_hint(format!("its inputs: {}; map them with inputs = {{ {role} = \"NAME\" }}", all()))
            })
        };
        let sample = input("sample", "sample")?;
        if sample.element != TensorElementType::Float32 {
            return Err(Error::config(
                "model",
                format!("input `{}` is {}; float32 expected", sample.name, sample.element_name()),
            ));
        }
        let rank = sample.shape.len();
        if rank != p.sample_shape.len() + 1 {
            return Err(Error::config(
                "sample_shape",
                format!(
                    "sample_shape {:?} does not fit input `{}` {}",
                    p.sample_shape,
                    sample.name,
                    sample.shape_text()
                ),
            ));
        }
        for (i, (want, have)) in p.sample_shape.iter().zip(&sample.shape[1..]).enumerate() {
            if *have > 0 && *have as usize != *want {
                return Err(Error::config(
                    "sample_shape",
                    format!(
                        "dimension {} of sample_shape is {want}, the model's input `{}` has {have} ({})",
                        i,
                        sample.name,
                        sample.shape_text()
                    ),
                ));
            }
        }
        let timestep = input("timestep", "timestep")?;
        if !matches!(timestep.element, TensorElementType::Float32 | TensorElementType::Int64 | TensorElementType::Int32)
        {
            return Err(Error::config(
                "model",
                format!("timestep input `{}` is {}", timestep.name, timestep.element_name()),
            )
            .with_hint("float32, int64 and int32 timesteps are supported"));
        }
        // A class-conditional UNet takes `class_labels`; a text-conditional one (Stable
        // Diffusion's) `encoder_hidden_states`.
        let cond_default = if model.input("class_labels").is_none() && model.input("encoder_hidden_states").is_some() {
            "encoder_hidden_states"
        } else {
            "class_labels"
        };
        let mut condition_dims = Vec::new();
        let condition = match &p.condition {
            Some(_) => {
                let s = input("condition", cond_default)?;
                condition_dims = s.shape.clone();
                Some((s.name.clone(), s.element))
            }
            None => {
                let name = p.inputs.get("condition").map_or(cond_default, String::as_str);
                if model.input(name).is_some() {
                    return Err(Error::config(
                        "condition",
                        format!("the model takes `{name}` but no `condition` column is named"),
                    )
                    .with_hint("name the column that feeds it, e.g. condition = \"label\""));
                }
                None
            }
        };
        let expected = 2 + usize::from(condition.is_some());
        if model.inputs.len() > expected {
            let fed =
                [Some(sample.name.as_str()), Some(timestep.name.as_str()), condition.as_ref().map(|c| c.0.as_str())];
            let extra: Vec<&str> =
                model.inputs.iter().map(|s| s.name.as_str()).filter(|n| !fed.contains(&Some(*n))).collect();
            return Err(Error::config(
                "inputs",
                format!("the model also takes {} that nothing feeds", extra.join(", ")),
            )
            .with_hint("map the sample, timestep and condition roles with `inputs`"));
        }
        let output = match &p.output {
            Some(o) => model
                .output(o)
                .map(|s| s.name.clone())
                .ok_or_else(|| Error::config("output", format!("the model has no output `{o}`")))?,
            None => model
                .outputs
                .first()
                .map(|s| s.name.clone())
                .ok_or_else(|| Error::config("model", "the model has no outputs"))?,
        };
        Ok(Names {
            sample: sample.name.clone(),
            timestep: timestep.name.clone(),
            timestep_type: timestep.element,
            timestep_rank: timestep.shape.len(),
            condition,
            condition_dims,
            output,
        })
    }
}

/// Checks the input's columns (latents, noise, condition) against the params and the model's
/// inputs: the output schema, and the per-row shape of a tensor condition (empty for a class id).
pub(crate) fn bind(
    p: &DiffuseParams,
    names: &Names,
    input: &SchemaRef,
    model_steps: usize,
) -> Result<(SchemaRef, Vec<usize>)> {
    let mut cond_shape = Vec::new();
    let shape = &p.sample_shape;
    let len: usize = shape.iter().product();
    if let Some(name) = &p.latents {
        let field = pipeline::columns::require(input, "latents", name, &[])?;
        if tensor_shape(field).is_none_or(|s| s.iter().product::<usize>() != len) {
            return Err(Error::config(
                "latents",
                format!("column `{name}` is {}; a tensor {shape:?} is expected", field.data_type()),
            ));
        }
    }
    if let Some(name) = &p.noise {
        let field = pipeline::columns::require(input, "noise", name, &[])?;
        let fits = tensor_shape(field)
            .map(|s| s.iter().product::<usize>())
            .is_some_and(|n| n % len == 0 && n / len >= p.steps);
        if !fits {
            return Err(Error::config(
                "noise",
                format!(
                    "column `{name}` is {}; a tensor [S, {}] with S >= steps ({}) is expected",
                    field.data_type(),
                    shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    p.steps
                ),
            ));
        }
    }
    if let Some(name) = &p.condition {
        let field = pipeline::columns::require(input, "condition", name, &[])?;
        let (_, ty) = names.condition.as_ref().expect("resolved with the condition");
        let ok = match field.data_type() {
            DataType::Int64 | DataType::Int32 => {
                matches!(ty, TensorElementType::Int64 | TensorElementType::Int32 | TensorElementType::Float32)
            }
            DataType::FixedSizeList(..) => *ty == TensorElementType::Float32,
            _ => false,
        };
        if !ok {
            return Err(Error::config(
                "condition",
                format!(
                    "column `{name}` is {} and the model's condition input is {}",
                    field.data_type(),
                    pipe_runtime::element_name(*ty)
                ),
            ));
        }
        cond_shape = tensor_shape(field).unwrap_or_default();
        if !cond_shape.is_empty() {
            let (input, _) = names.condition.as_ref().expect("resolved with the condition");
            let dims = &names.condition_dims;
            let fits = dims.len() == cond_shape.len() + 1
                && dims[1..].iter().zip(&cond_shape).all(|(m, c)| *m < 0 || *m as usize == *c);
            if !fits {
                let shown: Vec<String> = dims.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
                return Err(Error::config(
                    "condition",
                    format!(
                        "column `{name}` is a tensor {cond_shape:?}; the model's input `{input}` is [{}]",
                        shown.join(", ")
                    ),
                ));
            }
        }
        if let Some(Uncond::Column(u)) = &p.uncond {
            let ufield = pipeline::columns::require(input, "uncond", u, &[])?;
            if ufield.data_type() != field.data_type() || tensor_shape(ufield) != tensor_shape(field) {
                return Err(Error::config(
                    "uncond",
                    format!(
                        "column `{u}` is {} {:?}; the condition `{name}` is {} {:?}",
                        ufield.data_type(),
                        tensor_shape(ufield).unwrap_or_default(),
                        field.data_type(),
                        cond_shape
                    ),
                )
                .with_hint(
                    "uncond names a column of the condition's type and shape, e.g. the empty prompt's embeddings",
                ));
            }
        }
    } else if let Some(Uncond::Column(u)) = &p.uncond {
        return Err(Error::config("uncond", format!("uncond names column `{u}` but no `condition` is given")));
    }
    let mut fields = vec![tensor_field(&p.into, shape)];
    if p.trace {
        fields.push(tensor_field("trace", &[vec![model_steps], shape.clone()].concat()));
    }
    // `trace` goes even when this stage writes none: an upstream trace is not this sample's.
    let kept = pipeline::columns::without(input, &[p.into.as_str(), "trace"]);
    Ok((pipeline::columns::with_outputs(&kept, fields), cond_shape))
}
