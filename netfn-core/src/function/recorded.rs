//! A function's settings as the chain's record keeps them: the JSON text its kind wrote
//! ([`super::FunctionConfig::record`]), carried verbatim through the plan and the record.
//!
//! Verbatim because settings can be large (a firewall's 100,000 rules are megabytes): reading or
//! writing a record, cloning a plan, or telling whether a function's settings changed must not
//! build and walk a JSON tree. Comparing two is comparing text; only the kind parses it, into its
//! own typed config, when it needs to ([`RecordedSettings::parse`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// JSON text of one function's settings. Two are equal when their text is: a kind writes the
/// same settings the same way (serde, fields in declaration order).
#[derive(Clone)]
pub struct RecordedSettings(Box<RawValue>);

impl RecordedSettings {
    /// Records `settings` (a kind's settings type).
    pub fn of<T: Serialize + ?Sized>(settings: &T) -> Self {
        match serde_json::value::to_raw_value(settings) {
            Ok(raw) => RecordedSettings(raw),
            // Only a map with non-string keys fails; kinds' settings have none.
            Err(e) => {
                tracing::error!("a function's settings could not be recorded as JSON: {e}");
                Self::none()
            }
        }
    }

    /// No settings (`null`): what teardown keeps of a plan.
    pub fn none() -> Self {
        RecordedSettings(RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The settings as the kind's type `T` (fields `T` does not name are skipped).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RecordedSettings {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for RecordedSettings {}

impl fmt::Debug for RecordedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 120;
        let json = self.json();
        match json.char_indices().nth(SHOWN) {
            Some((cut, _)) => write!(f, "{}… ({} bytes)", &json[..cut], json.len()),
            None => f.write_str(json),
        }
    }
}

impl Serialize for RecordedSettings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordedSettings {
    /// Only from serde_json, and not inside a flattened or internally tagged container (serde
    /// buffers those, and a raw value cannot be taken from the buffer).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RecordedSettings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Rules {
        default: String,
        ports: Vec<u16>,
    }

    #[test]
    fn round_trips_through_a_record_verbatim() {
        let rules = Rules {
            default: "drop".into(),
            ports: vec![22, 80],
        };
        let recorded = RecordedSettings::of(&rules);
        assert_eq!(recorded.json(), r#"{"default":"drop","ports":[22,80]}"#);
        let record = serde_json::to_string(&vec![recorded.clone()]).unwrap();
        let back: Vec<RecordedSettings> = serde_json::from_str(&record).unwrap();
        assert_eq!(back[0], recorded);
        assert_eq!(back[0].parse::<Rules>().unwrap(), rules);
        assert_ne!(back[0], RecordedSettings::none());
        assert_eq!(RecordedSettings::none().json(), "null");
    }

    #[test]
    fn debug_shows_the_start_of_large_settings() {
        let big = RecordedSettings::of(&vec![7u32; 1000]);
        let shown = format!("{big:?}");
        assert!(shown.starts_with("[7,7,"), "{shown}");
        assert!(shown.ends_with(&format!("… ({} bytes)", big.json().len())));
    }
}
