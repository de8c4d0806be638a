//! docs/configuration.md and the code stay in step: every key of the
//! configuration structs appears in the reference's tables, and every key
//! in those tables is one of the code's.
//!
//! The keys are read from the structs themselves, by serializing a
//! configuration that has every table (each backend's, the cache's, an
//! upstream list) through a serializer that records field names. A key
//! whose value is not written (an unset `Option`, an empty list: serde
//! calls `skip_field` for it) is recorded too, so a new key is found
//! whether or not this file's configuration sets it.

use std::collections::BTreeSet;
use std::fmt;

use infergate::config::Config;
use serde::ser::{self, Serialize};

/// Every table the code has, so that the serializer walks into each.
const EVERY_TABLE: &str = r#"
[server]
[server.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
client_auth = "optional"

[auth]
keys_file = "keys.toml"

[[models]]
name = "sim"
backend = "simulated"
fallbacks = ["proc"]
cache_nondeterministic = true
[models.cache]
[models.simulated]
output_tokens = 3

[[models]]
name = "proc"
backend = "process"
[models.process]
command = ["python3", "worker.py"]
env = { A = "1" }
cwd = "/tmp"

[[models]]
name = "oa"
backend = "openai"
[models.openai]
model = "m"
api_key_env = "PATH"
[[models.openai.upstreams]]
url = "http://127.0.0.1:8000/v1"
name = "one"
"#;

/// The key paths of the code: `server.listen`, `models[].openai.upstreams[].url`.
fn code_keys() -> BTreeSet<String> {
    let config = Config::from_toml(EVERY_TABLE, "every table").expect("a valid config");
    let mut keys = BTreeSet::new();
    config
        .serialize(Recorder {
            path: String::new(),
            keys: &mut keys,
        })
        .expect("serialize");
    keys
}

/// The keys in the first column of docs/configuration.md's tables.
fn documented_keys() -> BTreeSet<String> {
    let doc = include_str!("../docs/configuration.md");
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let code = code_keys();
    let documented = documented_keys();
    // The walk did reach the nested tables.
    for key in [
        "server.listen",
        "models[].cache.ttl_seconds",
        "models[].simulated.mode",
        "models[].process.env",
        "models[].openai.base_url",
        "models[].openai.upstreams[].weight",
    ] {
        assert!(code.contains(key), "the walk missed {key}: {code:?}");
    }
    let missing: Vec<_> = code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys of the code missing from docs/configuration.md (add a row `| `key` | default | bounds | meaning |`): {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "keys in docs/configuration.md that the code does not have: {stale:?}"
    );
}

/// Records the path of every struct field it is shown. Lists add `[]`;
/// maps (`env`) are values, their keys the user's.
struct Recorder<'a> {
    path: String,
    keys: &'a mut BTreeSet<String>,
}

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl<'a> Recorder<'a> {
    fn field(&mut self, key: &str) -> Recorder<'_> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        self.keys.insert(path.clone());
        Recorder {
            path,
            keys: self.keys,
        }
    }

    fn element(&mut self) -> Recorder<'_> {
        Recorder {
            path: format!("{}[]", self.path),
            keys: self.keys,
        }
    }
}

type Result<T = ()> = std::result::Result<T, Error>;

impl<'a> ser::Serializer for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> Result {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Ok(())
    }
    fn serialize_none(self) -> Result {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self> {
        // A map is a value whose keys are the user's (`env`): nothing
        // inside it is recorded.
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        Ok(self)
    }
}

impl<'a> ser::SerializeSeq for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(self.element())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeTuple for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(self.element())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeTupleStruct for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(self.element())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeTupleVariant for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(self.element())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeMap for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _: &T) -> Result {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, _: &T) -> Result {
        Ok(())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeStruct for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result {
        value.serialize(self.field(key))
    }
    fn skip_field(&mut self, key: &'static str) -> Result {
        self.field(key);
        Ok(())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl<'a> ser::SerializeStructVariant for Recorder<'a> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result {
        value.serialize(self.field(key))
    }
    fn skip_field(&mut self, key: &'static str) -> Result {
        self.field(key);
        Ok(())
    }
    fn end(self) -> Result {
        Ok(())
    }
}
