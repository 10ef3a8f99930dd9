//! The explicit list of plugins a binary knows, built visibly in `main`, with the checks
//! `pipe doctor` runs for them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::doctor::Check;
use crate::plugin::Plugin;

/// Plugins by name. Registering a name twice is an error.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Arc<dyn Plugin>>,
    checks: Vec<Arc<dyn Check>>,
}

/// A plugin name registered twice.
#[derive(Debug, thiserror::Error)]
#[error("plugin \"{0}\" is registered twice")]
pub struct DuplicatePlugin(pub String);

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds plugins; a name that is already registered is an error.
    pub fn try_add(mut self, plugins: impl IntoIterator<Item = Box<dyn Plugin>>) -> Result<Self, DuplicatePlugin> {
        for plugin in plugins {
            let name = plugin.name();
            if self.plugins.insert(name, Arc::from(plugin)).is_some() {
                return Err(DuplicatePlugin(name.to_string()));
            }
        }
        Ok(self)
    }

    /// Adds plugins, panicking on a duplicate name: a programming error in the binary's `main`,
    /// caught the first time it runs.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, plugins: impl IntoIterator<Item = Box<dyn Plugin>>) -> Self {
        match self.try_add(plugins) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    /// All plugins, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.plugins.values()
    }

    /// All names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.keys().copied()
    }

    /// Adds a check for `pipe doctor` to run, after those added before it: how a support crate
    /// the plugins need (pipe_runtime: ONNX Runtime) reports on this machine.
    pub fn add_check(mut self, check: impl Check + 'static) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// The checks `pipe doctor` runs, in the order added.
    pub fn checks(&self) -> impl Iterator<Item = &Arc<dyn Check>> {
        self.checks.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docs::{PluginDoc, PluginKind};
    use crate::params::Params;
    use crate::plugin::{BuildContext, Stage};
    use arrow::datatypes::SchemaRef;

    struct Named(&'static str);

    impl Plugin for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn kind(&self) -> PluginKind {
            PluginKind::Transform
        }
        fn doc(&self) -> PluginDoc {
            PluginDoc::new(PluginKind::Transform, "test")
        }
        fn build(&self, _: &Params, _: &SchemaRef, _: &BuildContext) -> crate::Result<Stage> {
            Err(crate::Error::msg("not built in this test"))
        }
    }

    #[test]
    fn a_name_registered_twice_is_an_error() {
        let r = Registry::new().try_add(vec![Box::new(Named("a")) as Box<dyn Plugin>, Box::new(Named("b"))]).unwrap();
        assert_eq!(r.names().collect::<Vec<_>>(), ["a", "b"]);
        let err = r.try_add(vec![Box::new(Named("a")) as Box<dyn Plugin>]).err().unwrap();
        assert_eq!(err.to_string(), "plugin \"a\" is registered twice");
    }

    #[test]
    #[should_panic(expected = "plugin \"x\" is registered twice")]
    fn add_panics_on_a_duplicate() {
        let _ = Registry::new().add(vec![Box::new(Named("x")) as Box<dyn Plugin>, Box::new(Named("x"))]);
    }
}
