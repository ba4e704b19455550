//! A job's settings from the environment: `CROWDGRAD_{SECTION}__{KEY}` sets `[section]
//! key` (`CROWDGRAD_ROUND__TARGET=5`, `CROWDGRAD_FEDERATION__NATS='["nats://a:4222"]'`),
//! and `CROWDGRAD_NAME` and `CROWDGRAD_SEED` the top-level keys, over what the job file
//! says. A value is read as a TOML value (a number, a boolean, an array) where it is one,
//! and as a string otherwise. Other `CROWDGRAD_…` variables (`CROWDGRAD_ADDR`,
//! `CROWDGRAD_DATA_DIR`, …) are the command line's, and left to it.

use crate::config::ConfigError;

/// The prefix of every crowdgrad variable.
const PREFIX: &str = "CROWDGRAD_";

/// What separates a section from its key in a variable's name.
const SEPARATOR: &str = "__";

/// The job's top-level keys that the environment may set.
const TOP_LEVEL: [&str; 2] = ["name", "seed"];

/// `text` (a job file's TOML) with the settings that `vars` (name, value) give; an
/// error names the variable that cannot be a setting.
pub fn overlay(text: &str, vars: impl IntoIterator<Item = (String, String)>) -> Result<String, ConfigError> {
    let mut settings: Vec<(String, String)> = vars.into_iter().filter(|(name, _)| name.starts_with(PREFIX)).collect();
    settings.sort();
    let settings: Vec<(String, Vec<String>, String)> = settings
        .into_iter()
        .filter_map(|(name, value)| {
            let path: Vec<String> = name[PREFIX.len()..].split(SEPARATOR).map(str::to_ascii_lowercase).collect();
            let ours = path.len() > 1 || TOP_LEVEL.contains(&path[0].as_str());
            ours.then_some((name, path, value))
        })
        .collect();
    if settings.is_empty() {
        return Ok(text.to_string());
    }
    let mut job: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError { key: "job file".into(), reason: e.to_string() })?;
    for (name, path, value) in settings {
        let bad = |reason: String| ConfigError { key: name.clone(), reason };
        let table = match path.as_slice() {
            [_] => &mut job,
            [section, _] => {
                match job.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new())) {
                    toml::Value::Table(table) => table,
                    _ => return Err(bad(format!("`{section}` is not a section of a job"))),
                }
            }
            _ => return Err(bad(format!("names {} levels; a job's keys are `SECTION__KEY`", path.len()))),
        };
        table.insert(path[path.len() - 1].clone(), read(&value));
    }
    toml::to_string(&job).map_err(|e| ConfigError { key: "environment".into(), reason: e.to_string() })
}

/// `value` as a TOML value where it is one, else as a string.
fn read(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("value = {value}"))
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn variables_set_keys_over_the_file_and_leave_the_command_lines_alone() {
        let text = "name = \"file\"\n[round]\ntarget = 3\n";
        let set = vars(&[
            ("CROWDGRAD_ROUND__TARGET", "5"),
            ("CROWDGRAD_NAME", "from the environment"),
            ("CROWDGRAD_FEDERATION__NATS", "[\"nats://a:4222\"]"),
            ("CROWDGRAD_FEDERATION__RELAY_URL", "https://relay.example.org"),
            ("CROWDGRAD_DATA_DIR", "/elsewhere"),
            ("HOME", "/root"),
        ]);
        let job: toml::Table = toml::from_str(&overlay(text, set).expect("overlaid")).expect("TOML");
        assert_eq!(job["round"]["target"].as_integer(), Some(5));
        assert_eq!(job["name"].as_str(), Some("from the environment"));
        assert_eq!(job["federation"]["nats"][0].as_str(), Some("nats://a:4222"));
        assert_eq!(job["federation"]["relay_url"].as_str(), Some("https://relay.example.org"));
        assert!(!job.contains_key("data"), "CROWDGRAD_DATA_DIR is --data-dir's");
    }

    #[test]
    fn a_variable_that_cannot_be_a_setting_is_named() {
        let err = overlay("name = \"x\"\n", vars(&[("CROWDGRAD_NAME__DEEP", "1")])).expect_err("name is not a section");
        assert_eq!(err.key, "CROWDGRAD_NAME__DEEP");
        let err = overlay("", vars(&[("CROWDGRAD_A__B__C", "1")])).expect_err("three levels");
        assert_eq!(err.key, "CROWDGRAD_A__B__C");
    }
}
