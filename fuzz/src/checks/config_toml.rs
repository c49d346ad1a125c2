//! The node configuration file (`raft_kv::config::NodeConfig`): TOML from
//! an operator. Any text gives a configuration or a `ConfigError` that
//! names the file, never a panic; a parsed configuration can be validated
//! and turned into raft-core's configuration, and it survives
//! serialise → parse unchanged.

use std::path::Path;

use crate::config::{ConfigError, NodeConfig};

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let config = match NodeConfig::from_toml(text, path) {
        Ok(config) => config,
        Err(error) => {
            assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
            assert!(error.to_string().contains("fuzz.toml"), "{error}");
            return;
        }
    };
    let _ = config.advertise_address();
    let membership = config.initial_membership();
    match config.validate() {
        Ok(()) => {
            let membership = membership.expect("validate checked the initial cluster");
            if let Some(membership) = membership {
                assert!(membership.is_voter(config.node_id));
            }
            let raft = config.raft_config();
            assert_eq!(raft.id, config.node_id);
            assert!(
                raft.validate().is_ok(),
                "a valid node configuration gives an invalid raft configuration"
            );
        }
        Err(error) => {
            assert!(matches!(error, ConfigError::Invalid(_)), "{error:?}");
            let _ = error.to_string();
        }
    }
    let text = toml::to_string(&config).expect("a parsed configuration serialises");
    let again = NodeConfig::from_toml(&text, path).expect("a serialised configuration parses");
    assert_eq!(again, config, "serialise → parse changed the configuration");
}
