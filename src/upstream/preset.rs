//! Presets: the settings of well-known job APIs, shipped in the binary
//! (`config/presets/*.toml`). A preset is what a user would otherwise write in
//! `[[upstreams]]`: a default base URL, request headers and kinds.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::kinds::KindSpec;

/// Every preset, by name, as shipped.
pub const PRESETS: [(&str, &str); 5] = [
    ("vector", include_str!("../../config/presets/vector.toml")),
    (
        "google-lro",
        include_str!("../../config/presets/google-lro.toml"),
    ),
    (
        "openai-batch",
        include_str!("../../config/presets/openai-batch.toml"),
    ),
    (
        "replicate",
        include_str!("../../config/presets/replicate.toml"),
    ),
    (
        "github-actions",
        include_str!("../../config/presets/github-actions.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub base_url: Option<url::Url>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub kinds: Vec<KindSpec>,
}

/// The preset named `name`, parsed.
pub fn preset(name: &str) -> Result<Preset, String> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown preset {name:?}; the presets are {}",
            names.join(", ")
        )
    })?;
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("the shipped preset {name:?} does not parse: {e}"))
}

/// The kind names of every preset: what the command line accepts without asking
/// a daemon.
pub fn preset_kind_names() -> Vec<String> {
    PRESETS
        .iter()
        .filter_map(|(n, _)| preset(n).ok())
        .flat_map(|p| p.kinds.into_iter().map(|k| k.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::kinds::KindDef;

    #[test]
    fn every_shipped_preset_parses_and_its_kinds_compile() {
        let mut names = std::collections::HashSet::new();
        for (name, _) in PRESETS {
            let p = preset(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.kinds.is_empty(), "{name}");
            for k in &p.kinds {
                KindDef::new(k).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(names.insert(k.name.clone()), "kind {} twice", k.name);
            }
        }
        assert!(preset("nope").unwrap_err().contains("openai-batch"));
    }
}
