//! Just enough of the protobuf wire format to write a gRPC bulk request's entries straight
//! to bytes. Through prost's generated structs every entry was a dozen owned strings, a
//! metadata `HashMap`, an extensions `BTreeMap` and a copy of its payload, all built, encoded
//! once and dropped: a third of the work of a bulk delivery.

/// Wire type of varints (and enums, bools).
const VARINT: u32 = 0;
/// Wire type of doubles.
const FIXED64: u32 = 1;
/// Wire type of strings, bytes and embedded messages.
const LEN: u32 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    varint(out, u64::from(tag << 3 | wire_type));
}

/// The size of a length-delimited field of `len` bytes (tags below 16 take one byte).
pub fn field_len(tag: u32, len: usize) -> usize {
    debug_assert!(tag < 16);
    1 + varint_len(len as u64) + len
}

/// The key and length of a length-delimited field whose `len` bytes follow.
pub fn field_head(out: &mut Vec<u8>, tag: u32, len: usize) {
    key(out, tag, LEN);
    varint(out, len as u64);
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    field_head(out, tag, value.len());
    out.extend_from_slice(value);
}

/// A proto3 string or bytes field: left out when empty, as protobuf encoders do.
pub fn string(out: &mut Vec<u8>, tag: u32, value: impl AsRef<[u8]>) {
    let value = value.as_ref();
    if !value.is_empty() {
        bytes(out, tag, value);
    }
}

/// The size of `string(tag, value)`.
pub fn string_len(tag: u32, value: impl AsRef<[u8]>) -> usize {
    match value.as_ref().len() {
        0 => 0,
        len => field_len(tag, len),
    }
}

/// One entry of a `map<string, string>` field.
pub fn map_entry(out: &mut Vec<u8>, tag: u32, k: &str, v: &str) {
    field_head(out, tag, string_len(1, k) + string_len(2, v));
    string(out, 1, k);
    string(out, 2, v);
}

/// A JSON object as the body of a `google.protobuf.Struct`.
pub fn json_struct(out: &mut Vec<u8>, map: &serde_json::Map<String, serde_json::Value>) {
    for (k, v) in map {
        let value_len = json_value_len(v);
        field_head(out, 1, string_len(1, k) + field_len(2, value_len));
        string(out, 1, k);
        field_head(out, 2, value_len);
        json_value(out, v);
    }
}

/// The size of `json_struct(map)`.
pub fn json_struct_len(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    map.iter()
        .map(|(k, v)| field_len(1, string_len(1, k) + field_len(2, json_value_len(v))))
        .sum()
}

/// A JSON value as the body of a `google.protobuf.Value` (its `kind` is a oneof, so even a
/// default value is written: it says which kind).
fn json_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => {
            key(out, 1, VARINT);
            varint(out, 0);
        }
        Value::Number(n) => {
            key(out, 2, FIXED64);
            out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
        }
        Value::String(s) => bytes(out, 3, s.as_bytes()),
        Value::Bool(b) => {
            key(out, 4, VARINT);
            varint(out, u64::from(*b));
        }
        Value::Object(o) => {
            field_head(out, 5, json_struct_len(o));
            json_struct(out, o);
        }
        Value::Array(a) => {
            field_head(out, 6, list_len(a));
            for item in a {
                field_head(out, 1, json_value_len(item));
                json_value(out, item);
            }
        }
    }
}

fn json_value_len(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) => 2,
        Value::Number(_) => 9,
        Value::String(s) => field_len(3, s.len()),
        Value::Object(o) => field_len(5, json_struct_len(o)),
        Value::Array(a) => field_len(6, list_len(a)),
    }
}

/// The size of a `google.protobuf.ListValue` body.
fn list_len(items: &[serde_json::Value]) -> usize {
    items
        .iter()
        .map(|item| field_len(1, json_value_len(item)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_json_object_decodes_as_the_struct_prost_would_build() {
        let json = serde_json::json!({
            "s": "text", "empty": "", "n": 1.5, "t": true, "f": false, "null": null,
            "list": [1, "two", {"three": 3}], "obj": {"deep": {"x": []}},
        });
        let mut out = Vec::new();
        json_struct(&mut out, json.as_object().unwrap());
        assert_eq!(out.len(), json_struct_len(json.as_object().unwrap()));
        let decoded = prost_types::Struct::decode(&out[..]).unwrap();
        use prost_types::value::Kind;
        let kind = |k: &str| decoded.fields[k].kind.clone().unwrap();
        assert_eq!(kind("s"), Kind::StringValue("text".into()));
        assert_eq!(kind("empty"), Kind::StringValue(String::new()));
        assert_eq!(kind("n"), Kind::NumberValue(1.5));
        assert_eq!(kind("t"), Kind::BoolValue(true));
        assert_eq!(kind("f"), Kind::BoolValue(false));
        assert_eq!(kind("null"), Kind::NullValue(0));
        let Kind::ListValue(list) = kind("list") else {
            panic!("a list")
        };
        assert_eq!(list.values.len(), 3);
        assert_eq!(list.values[1].kind, Some(Kind::StringValue("two".into())));
        let Kind::StructValue(obj) = kind("obj") else {
            panic!("an object")
        };
        let Some(Kind::StructValue(deep)) = &obj.fields["deep"].kind else {
            panic!("nested")
        };
        assert_eq!(
            deep.fields["x"].kind,
            Some(Kind::ListValue(Default::default()))
        );
    }

    #[test]
    fn varints_and_lengths_agree_with_what_is_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::decode_varint(&mut &out[..]).unwrap(), v);
        }
        let mut out = Vec::new();
        string(&mut out, 3, "x".repeat(300));
        assert_eq!(out.len(), string_len(3, "x".repeat(300)));
    }
}
