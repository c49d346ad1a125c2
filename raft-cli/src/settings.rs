//! Where the connection settings come from: flags, then environment
//! variables, then a TOML config file. Each setting is taken from the first
//! source that has it.
//!
//! The environment is passed in as a lookup function so that the precedence
//! rules can be tested without changing the process's environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::args::GlobalArgs;

/// Comma-separated node addresses.
pub const ENV_ENDPOINTS: &str = "RAFT_ENDPOINTS";
/// The CA certificate file.
pub const ENV_CA: &str = "RAFT_CA";
/// The client certificate file.
pub const ENV_CERT: &str = "RAFT_CERT";
/// The client key file.
pub const ENV_KEY: &str = "RAFT_KEY";
/// The config file.
pub const ENV_CONFIG: &str = "RAFT_CLI_CONFIG";

/// The config file's shape.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Node addresses.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// The client key.
    pub key: Option<PathBuf>,
}

impl ConfigFile {
    /// Reads `path`; relative certificate paths are made relative to the
    /// file's directory, so a config file works from any directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the config file {}; check the path given by --config or {ENV_CONFIG}",
                path.display()
            )
        })?;
        let mut config: ConfigFile = toml::from_str(&text).with_context(|| {
            format!(
                "invalid config file {}; expected endpoints = [\"host:port\", ...], ca, cert and key",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [&mut config.ca, &mut config.cert, &mut config.key]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }
}

/// Where each setting came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The config file.
    File,
}

/// Connection settings, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Node addresses (may be empty: commands that connect fail then).
    pub endpoints: Vec<String>,
    /// Where the endpoints came from.
    pub endpoints_source: Option<Source>,
    /// The CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// The client key.
    pub key: Option<PathBuf>,
    /// The per-request deadline.
    pub timeout: Duration,
}

/// Merges flags, environment (`env`) and the config file.
pub fn resolve(
    args: &GlobalArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let config_path = args
        .config
        .clone()
        .or_else(|| env(ENV_CONFIG).map(PathBuf::from));
    let file = match &config_path {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let (endpoints, endpoints_source) = if !args.endpoints.is_empty() {
        (split_endpoints(&args.endpoints), Some(Source::Flag))
    } else if let Some(value) = env(ENV_ENDPOINTS) {
        (split_endpoints(&[value]), Some(Source::Env))
    } else if !file.endpoints.is_empty() {
        (split_endpoints(&file.endpoints), Some(Source::File))
    } else {
        (Vec::new(), None)
    };
    let pick = |flag: &Option<PathBuf>, name: &str, from_file: Option<PathBuf>| {
        flag.clone()
            .or_else(|| env(name).map(PathBuf::from))
            .or(from_file)
    };
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    Ok(Settings {
        endpoints,
        endpoints_source,
        ca: pick(&args.ca, ENV_CA, file.ca),
        cert: pick(&args.cert, ENV_CERT, file.cert),
        key: pick(&args.key, ENV_KEY, file.key),
        timeout: Duration::from_secs(args.timeout),
    })
}

/// Splits comma-separated lists and drops blanks.
fn split_endpoints(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

impl Settings {
    /// The endpoints, or an error saying how to give them.
    pub fn require_endpoints(&self) -> anyhow::Result<&[String]> {
        if self.endpoints.is_empty() {
            bail!(
                "no node addresses given; pass --endpoints 127.0.0.1:7001,127.0.0.1:7002, \
                 set {ENV_ENDPOINTS}, or put endpoints = [...] in the config file (--config / {ENV_CONFIG})"
            );
        }
        Ok(&self.endpoints)
    }

    /// The three TLS files, or an error saying which is missing and how to
    /// make one.
    pub fn require_tls(&self) -> anyhow::Result<(&Path, &Path, &Path)> {
        let missing = |what: &str, flag: &str, env: &str| {
            anyhow::anyhow!(
                "no {what} given; pass --{flag} FILE, set {env}, or put {flag} = \"FILE\" in the \
                 config file (create the files with `raft-cli certs ca` and `raft-cli certs client`)"
            )
        };
        Ok((
            self.ca
                .as_deref()
                .ok_or_else(|| missing("cluster CA certificate", "ca", ENV_CA))?,
            self.cert
                .as_deref()
                .ok_or_else(|| missing("client certificate", "cert", ENV_CERT))?,
            self.key
                .as_deref()
                .ok_or_else(|| missing("client key", "key", ENV_KEY))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn args() -> GlobalArgs {
        GlobalArgs {
            timeout: 15,
            ..GlobalArgs::default()
        }
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("cli.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "endpoints = [\"f:1\"]\nca = \"file-ca.pem\"\ncert = \"/abs/file.pem\"\nkey = \"file.key\"\n",
        );
        let env = env_of(&[
            (ENV_CONFIG, config.to_str().unwrap()),
            (ENV_ENDPOINTS, "e:1, e:2"),
            (ENV_CERT, "env.pem"),
        ]);

        // Nothing on the command line: env where set, else the file.
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.endpoints, ["e:1", "e:2"]);
        assert_eq!(s.endpoints_source, Some(Source::Env));
        assert_eq!(s.cert, Some(PathBuf::from("env.pem")));
        assert_eq!(
            s.ca,
            Some(dir.path().join("file-ca.pem")),
            "relative to the file"
        );
        assert_eq!(s.key, Some(dir.path().join("file.key")));

        // Flags win.
        let mut a = args();
        a.endpoints = vec!["a:1".into(), "b:2".into()];
        a.cert = Some("flag.pem".into());
        a.ca = Some("flag-ca.pem".into());
        let s = resolve(&a, &env).unwrap();
        assert_eq!(s.endpoints, ["a:1", "b:2"]);
        assert_eq!(s.endpoints_source, Some(Source::Flag));
        assert_eq!(s.cert, Some(PathBuf::from("flag.pem")));
        assert_eq!(s.ca, Some(PathBuf::from("flag-ca.pem")));
        assert_eq!(s.key, Some(dir.path().join("file.key")));

        // Only the file.
        let env = env_of(&[(ENV_CONFIG, config.to_str().unwrap())]);
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.endpoints, ["f:1"]);
        assert_eq!(s.endpoints_source, Some(Source::File));
        assert_eq!(
            s.cert,
            Some(PathBuf::from("/abs/file.pem")),
            "absolute stays"
        );
    }

    #[test]
    fn the_config_flag_overrides_the_config_env() {
        let dir = tempfile::tempdir().unwrap();
        let from_env = write_config(dir.path(), "endpoints = [\"env-file:1\"]\n");
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "endpoints = [\"flag-file:1\"]\n").unwrap();
        let env = env_of(&[(ENV_CONFIG, from_env.to_str().unwrap())]);
        let mut a = args();
        a.config = Some(other);
        assert_eq!(resolve(&a, &env).unwrap().endpoints, ["flag-file:1"]);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let env = env_of(&[(ENV_ENDPOINTS, " "), (ENV_CA, "")]);
        let s = resolve(&args(), &env).unwrap();
        assert!(s.endpoints.is_empty());
        assert_eq!(s.ca, None);
    }

    #[test]
    fn missing_settings_say_how_to_give_them() {
        let s = resolve(&args(), &env_of(&[])).unwrap();
        let e = s.require_endpoints().unwrap_err().to_string();
        assert!(
            e.contains("--endpoints") && e.contains(ENV_ENDPOINTS),
            "{e}"
        );
        let e = s.require_tls().unwrap_err().to_string();
        assert!(
            e.contains("--ca") && e.contains(ENV_CA) && e.contains("certs"),
            "{e}"
        );
    }

    #[test]
    fn bad_config_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "endpoint = [\"typo\"]\n");
        let mut a = args();
        a.config = Some(config.clone());
        let e = format!("{:#}", resolve(&a, &env_of(&[])).unwrap_err());
        assert!(
            e.contains(config.to_str().unwrap()) && e.contains("endpoint"),
            "{e}"
        );
        a.config = Some(dir.path().join("missing.toml"));
        let e = format!("{:#}", resolve(&a, &env_of(&[])).unwrap_err());
        assert!(e.contains("missing.toml") && e.contains("--config"), "{e}");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let mut a = args();
        a.timeout = 0;
        assert!(resolve(&a, &env_of(&[])).is_err());
    }
}
