//! Plugin documentation, derived from each plugin's params struct (its doc comments, types and
//! defaults through `schemars`), so `pipe plugins NAME` can never drift from the code.

use schemars::JsonSchema;
use serde_json::Value;

/// What kind of stage a plugin makes, which decides its default input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Creates rows; takes no input.
    Source,
    /// Reads rows and emits rows.
    Transform,
    /// Writes rows out (and passes them on, so sinks can be chained).
    Sink,
}

impl PluginKind {
    /// "source", "transform" or "sink".
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Source => "source",
            PluginKind::Transform => "transform",
            PluginKind::Sink => "sink",
        }
    }
}

/// One param of a plugin.
#[derive(Debug, Clone)]
pub struct ParamDoc {
    /// The key.
    pub name: String,
    /// Its type, in words ("string", "\"fit\" | \"fill\"", "array of 2 integers").
    pub ty: String,
    /// Its default, as TOML, when it has one.
    pub default: Option<String>,
    /// Whether the key must be given.
    pub required: bool,
    /// The field's doc comment.
    pub doc: String,
}

/// A column a plugin reads or writes.
#[derive(Debug, Clone)]
pub struct ColumnDoc {
    /// Column name (or the param that names it).
    pub name: String,
    /// Arrow type, in words.
    pub ty: String,
    /// What it holds.
    pub doc: String,
}

/// Everything `pipe plugins NAME` prints about a plugin.
#[derive(Debug, Clone)]
pub struct PluginDoc {
    /// Source, transform or sink.
    pub kind: PluginKind,
    /// One or two sentences.
    pub summary: String,
    /// Its params.
    pub params: Vec<ParamDoc>,
    /// Columns it reads.
    pub reads: Vec<ColumnDoc>,
    /// Columns it writes.
    pub writes: Vec<ColumnDoc>,
    /// A `[[stage]]` example.
    pub example: Option<String>,
}

impl PluginDoc {
    /// A doc with no params yet.
    pub fn new(kind: PluginKind, summary: impl Into<String>) -> Self {
        Self { kind, summary: summary.into(), params: Vec::new(), reads: Vec::new(), writes: Vec::new(), example: None }
    }

    /// Takes the params from the params struct `P` (fields, doc comments, types, defaults).
    pub fn params<P: JsonSchema>(mut self) -> Self {
        let schema = schemars::schema_for!(P);
        self.params = params_from_schema(schema.as_value());
        self
    }

    /// Adds a column the plugin reads.
    pub fn reads(mut self, name: &str, ty: &str, doc: &str) -> Self {
        self.reads.push(ColumnDoc { name: name.into(), ty: ty.into(), doc: doc.into() });
        self
    }

    /// Adds a column the plugin writes.
    pub fn writes(mut self, name: &str, ty: &str, doc: &str) -> Self {
        self.writes.push(ColumnDoc { name: name.into(), ty: ty.into(), doc: doc.into() });
        self
    }

    /// Sets the example.
    pub fn example(mut self, toml: &str) -> Self {
        self.example = Some(toml.trim().to_string());
        self
    }
}

/// The keys of the params struct `P`, flattened structs' keys included, sorted.
pub(crate) fn param_names<P: JsonSchema>() -> Vec<String> {
    let schema = schemars::schema_for!(P);
    let props = schema.as_value().get("properties").and_then(Value::as_object);
    props.map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

fn params_from_schema(root: &Value) -> Vec<ParamDoc> {
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root.get("properties").and_then(Value::as_object) else { return Vec::new() };
    props
        .iter()
        .map(|(name, prop)| {
            let resolved = resolve(root, prop);
            ParamDoc {
                name: name.clone(),
                ty: type_name(root, prop),
                default: prop.get("default").filter(|d| !d.is_null()).map(toml_literal),
                required: required.contains(&name.as_str()),
                doc: description(prop).or_else(|| description(resolved)).unwrap_or_default(),
            }
        })
        .collect()
}

fn description(v: &Value) -> Option<String> {
    v.get("description").and_then(Value::as_str).map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            r.strip_prefix("#/$defs/").and_then(|name| root.get("$defs")?.get(name)).map_or(v, |d| resolve(root, d))
        }
        None => v,
    }
}

fn type_name(root: &Value, v: &Value) -> String {
    let v = resolve(root, v);
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        return values.iter().map(toml_literal).collect::<Vec<_>>().join(" | ");
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = v.get(key).and_then(Value::as_array) {
            let consts: Vec<String> = options
                .iter()
                .map(|o| resolve(root, o))
                .flat_map(|o| match (o.get("const"), o.get("enum").and_then(Value::as_array)) {
                    (Some(c), _) => vec![toml_literal(c)],
                    (None, Some(e)) => e.iter().map(toml_literal).collect(),
                    _ => Vec::new(),
                })
                .collect();
            if consts.len() == options.len() && !consts.is_empty() {
                return consts.join(" | ");
            }
            let names: Vec<String> = options
                .iter()
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .map(|o| type_name(root, o))
                .collect();
            return names.join(" or ");
        }
    }
    match v.get("type") {
        Some(Value::String(t)) => simple_type(root, v, t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(|t| simple_type(root, v, t))
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    }
}

fn simple_type(root: &Value, v: &Value, t: &str) -> String {
    match t {
        "integer" => "integer".into(),
        "number" => "float".into(),
        "boolean" => "boolean".into(),
        "string" => "string".into(),
        "object" => "table".into(),
        "array" => {
            let item = v.get("items").map_or("any".to_string(), |i| type_name(root, i));
            match (v.get("minItems"), v.get("maxItems")) {
                (Some(a), Some(b)) if a == b => format!("array of {a} {item}"),
                _ => format!("array of {item}"),
            }
        }
        other => other.to_string(),
    }
}

fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(map) if map.is_empty() => "{}".to_string(),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter().map(|(k, v)| format!("{k} = {}", toml_literal(v))).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, JsonSchema, Default)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        /// Three channels.
        #[default]
        Rgb,
        /// One channel.
        Gray,
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct P {
        /// The folder to read.
        path: String,
        /// Colour mode.
        #[serde(default)]
        mode: Mode,
        /// Output size.
        #[serde(default = "size")]
        size: [u32; 2],
        /// Optional globs.
        #[serde(default)]
        include: Option<Vec<String>>,
    }

    fn size() -> [u32; 2] {
        [8, 8]
    }

    #[test]
    fn params_come_from_the_struct() {
        let doc = PluginDoc::new(PluginKind::Source, "x").params::<P>();
        let get = |n: &str| doc.params.iter().find(|p| p.name == n).unwrap().clone();
        let path = get("path");
        assert!(path.required);
        assert_eq!((path.ty.as_str(), path.doc.as_str()), ("string", "The folder to read."));
        let mode = get("mode");
        assert_eq!(mode.ty, "\"rgb\" | \"gray\"");
        assert_eq!(mode.default.as_deref(), Some("\"rgb\""));
        let size = get("size");
        assert_eq!(size.ty, "array of 2 integer");
        assert_eq!(size.default.as_deref(), Some("[8, 8]"));
        assert_eq!(get("include").ty, "array of string");
    }
}
