//! Which erasure code `EncodeVolume` uses when the request names none: the
//! directory's `ec_code` (`--ec-code`), or the volume's collection's
//! (`[collections.<name>] ec_code`). Parsed once, at start-up, where a bad
//! code stops the directory with the setting's name.

use std::collections::BTreeMap;

use hayloft_storage::erasure::Code;

use crate::DirectoryConfig;
use crate::error::{Error, Result};

/// The default code and the collections' own, by stored collection name
/// (`""` for `[collections.default]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcCodes {
    default: Code,
    collections: BTreeMap<String, Code>,
}

impl Default for EcCodes {
    fn default() -> Self {
        EcCodes {
            default: Code::DEFAULT,
            collections: BTreeMap::new(),
        }
    }
}

impl EcCodes {
    /// Every code of `config`; [`Error::Config`] naming the setting for one
    /// that does not parse.
    pub fn from_config(config: &DirectoryConfig) -> Result<EcCodes> {
        let default = config
            .ec_code
            .parse::<Code>()
            .map_err(|e| Error::Config(format!("ec_code: {e}")))?;
        let mut collections = BTreeMap::new();
        for (name, collection) in &config.collections {
            if let Some(code) = &collection.ec_code {
                let code = code
                    .parse::<Code>()
                    .map_err(|e| Error::Config(format!("[collections.{name}] ec_code: {e}")))?;
                collections.insert(hayloft_access::stored_collection(name).to_owned(), code);
            }
        }
        Ok(EcCodes {
            default,
            collections,
        })
    }

    /// `default` for every collection.
    pub fn uniform(default: Code) -> EcCodes {
        EcCodes {
            default,
            collections: BTreeMap::new(),
        }
    }

    /// The code for a volume of `collection` (its stored name).
    pub fn for_collection(&self, collection: &str) -> Code {
        self.collections
            .get(collection)
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_s_code_wins_over_the_default_and_bad_codes_name_their_setting() {
        let collection =
            |replication: Option<usize>, ec_code: Option<&str>| crate::CollectionConfig {
                replication,
                ec_code: ec_code.map(str::to_owned),
                ..crate::CollectionConfig::default()
            };
        let mut config = DirectoryConfig {
            ec_code: "4+2".into(),
            ..DirectoryConfig::default()
        };
        config
            .collections
            .insert("photos".into(), collection(None, Some("6+3")));
        config
            .collections
            .insert("default".into(), collection(None, Some("2+1")));
        config
            .collections
            .insert("voice".into(), collection(Some(2), None));
        let codes = EcCodes::from_config(&config).unwrap();
        assert_eq!(codes.for_collection("photos").to_string(), "6+3");
        assert_eq!(codes.for_collection("").to_string(), "2+1");
        assert_eq!(codes.for_collection("voice").to_string(), "4+2");
        assert_eq!(codes.for_collection("other").to_string(), "4+2");

        config.ec_code = "10-4".into();
        let error = EcCodes::from_config(&config).unwrap_err().to_string();
        assert!(
            error.starts_with("ec_code: invalid erasure code \"10-4\""),
            "{error}"
        );
        config.ec_code = "10+4".into();
        config.collections.get_mut("photos").unwrap().ec_code = Some("0+3".into());
        let error = EcCodes::from_config(&config).unwrap_err().to_string();
        assert!(
            error.starts_with("[collections.photos] ec_code: invalid erasure code"),
            "{error}"
        );
        assert!(error.contains("at least one data"), "{error}");
    }
}
