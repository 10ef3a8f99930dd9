//! The explicit list of plugins a binary knows, built visibly in `main`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::plugin::Plugin;

/// Plugins by name. Registering a name twice is an error.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Arc<dyn Plugin>>,
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
}
