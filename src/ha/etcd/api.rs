//! The JSON of etcd's v3 gateway, as typed requests and answers.
//!
//! The gateway speaks protobuf's JSON mapping: `bytes` fields (keys,
//! values, election names) are base64, `int64` fields (revisions, lease
//! IDs, TTLs) are JSON strings, and a field at its zero value is left out
//! (an empty range has no `kvs`, a failed txn no `succeeded`). Requests
//! are written the same way; answers are read leniently (an `int64` as a
//! number is accepted too, unknown fields are ignored).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// One key and its value, as etcd stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    #[serde(deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "de_bytes")]
    pub value: Vec<u8>,
    /// Revision of the key's creation: unchanged by later puts.
    #[serde(deserialize_with = "de_i64")]
    pub create_revision: i64,
    /// Revision of the key's last change.
    #[serde(deserialize_with = "de_i64")]
    pub mod_revision: i64,
    /// Number of changes since creation.
    #[serde(deserialize_with = "de_i64")]
    pub version: i64,
    /// The lease the key is attached to (0: none).
    #[serde(deserialize_with = "de_i64")]
    pub lease: i64,
}

/// What the keys of a range are: one key, or every key with a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Range {
    #[serde(serialize_with = "ser_bytes")]
    pub key: Vec<u8>,
    /// End of the range (exclusive); empty for the one key.
    #[serde(serialize_with = "ser_bytes", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// At most this many keys (0: all).
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    pub limit: i64,
    /// Keys without their values.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
    /// Read the keys as they were at this revision (0: now); etcd keeps
    /// history until it is compacted.
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    pub revision: i64,
}

impl Range {
    /// Just `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Range {
        Range {
            key: key.into(),
            ..Range::default()
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Range {
        let key = prefix.into();
        Range {
            range_end: prefix_end(&key),
            key,
            ..Range::default()
        }
    }
}

/// The first key after every key with `prefix`: the prefix with its last
/// byte below 0xff incremented (and what follows dropped). A prefix of only
/// 0xff bytes (or none) has no such key; etcd reads `"\0"` as "to the end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// The keys found by a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RangeResponse {
    pub header: Header,
    pub kvs: Vec<KeyValue>,
    /// Keys in the range (more than `kvs` with a limit).
    #[serde(deserialize_with = "de_i64")]
    pub count: i64,
    pub more: bool,
}

/// The part of every answer that says at which revision it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Header {
    /// The store's revision when the request was served.
    #[serde(deserialize_with = "de_i64")]
    pub revision: i64,
}

/// A put of `value` under `key`, attached to `lease` when not 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Put {
    #[serde(serialize_with = "ser_bytes")]
    pub key: Vec<u8>,
    #[serde(serialize_with = "ser_bytes")]
    pub value: Vec<u8>,
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

/// An answer that carries only its header (put, revoke).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HeaderOnly {
    pub header: Header,
}

/// How many keys a delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DeleteResponse {
    pub header: Header,
    #[serde(deserialize_with = "de_i64")]
    pub deleted: i64,
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One condition of a [`Txn`] on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's creation revision (0: the key does not exist).
    CreateRevision(Vec<u8>, CompareOp, i64),
    /// The key's last-change revision.
    ModRevision(Vec<u8>, CompareOp, i64),
    /// The key's value.
    Value(Vec<u8>, CompareOp, Vec<u8>),
}

impl Serialize for Compare {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        let (key, op) = match self {
            Compare::CreateRevision(k, op, rev) => {
                m.serialize_entry("target", "CREATE")?;
                m.serialize_entry("create_revision", &rev.to_string())?;
                (k, op)
            }
            Compare::ModRevision(k, op, rev) => {
                m.serialize_entry("target", "MOD")?;
                m.serialize_entry("mod_revision", &rev.to_string())?;
                (k, op)
            }
            Compare::Value(k, op, value) => {
                m.serialize_entry("target", "VALUE")?;
                m.serialize_entry("value", &STANDARD.encode(value))?;
                (k, op)
            }
        };
        m.serialize_entry("key", &STANDARD.encode(key))?;
        m.serialize_entry("result", op)?;
        m.end()
    }
}

/// One operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "request_put")]
    Put(Put),
    #[serde(rename = "request_range")]
    Range(Range),
    /// Deletes the keys of the range.
    #[serde(rename = "request_delete_range")]
    Delete(Range),
}

/// An atomic if-then-else: when every compare holds, `success` is applied,
/// else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TxnResponse {
    pub header: Header,
    /// Whether the compares held (and `success` was applied).
    pub succeeded: bool,
    /// The answers to the applied operations, in order.
    pub responses: Vec<OpResponse>,
}

/// The answer to one operation of a txn.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum OpResponse {
    #[serde(rename = "response_put")]
    Put(HeaderOnly),
    #[serde(rename = "response_range")]
    Range(RangeResponse),
    #[serde(rename = "response_delete_range")]
    Delete(DeleteResponse),
}

/// `ID` as etcd spells it in lease requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseId {
    #[serde(rename = "ID", serialize_with = "ser_i64")]
    pub id: i64,
}

/// A lease request for `ttl` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseGrant {
    #[serde(rename = "TTL", serialize_with = "ser_i64")]
    pub ttl: i64,
}

/// A lease and its time to live in seconds, as granted or renewed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Lease {
    #[serde(rename = "ID", deserialize_with = "de_i64")]
    pub id: i64,
    /// Seconds left; 0 or less when the lease is gone.
    #[serde(rename = "TTL", deserialize_with = "de_i64")]
    pub ttl: i64,
    /// Why a grant failed, when it did.
    pub error: String,
}

/// A keep-alive answer: the gateway streams it, one `result` per request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeepAliveStream {
    pub result: Option<Lease>,
    pub error: Option<ErrorBody>,
}

/// The time-to-live question, optionally with the lease's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseTimeToLive {
    #[serde(rename = "ID", serialize_with = "ser_i64")]
    pub id: i64,
    pub keys: bool,
}

/// A lease's remaining and granted time, and its keys if asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LeaseTtl {
    #[serde(rename = "ID", deserialize_with = "de_i64")]
    pub id: i64,
    /// Seconds left; -1 when the lease has expired or never existed.
    #[serde(rename = "TTL", deserialize_with = "de_i64")]
    pub ttl: i64,
    #[serde(rename = "grantedTTL", deserialize_with = "de_i64")]
    pub granted_ttl: i64,
    #[serde(deserialize_with = "de_bytes_list")]
    pub keys: Vec<Vec<u8>>,
}

/// A campaign for the election `name`, proclaiming `value`, held by `lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Campaign {
    #[serde(serialize_with = "ser_bytes")]
    pub name: Vec<u8>,
    #[serde(serialize_with = "ser_bytes")]
    pub value: Vec<u8>,
    #[serde(serialize_with = "ser_i64")]
    pub lease: i64,
}

/// A won campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CampaignResponse {
    pub header: Header,
    pub leader: LeaderKey,
}

/// The key that holds leadership: its creation revision orders leaders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LeaderKey {
    #[serde(deserialize_with = "de_bytes")]
    pub name: Vec<u8>,
    #[serde(deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// The key's creation revision.
    #[serde(deserialize_with = "de_i64")]
    pub rev: i64,
    #[serde(deserialize_with = "de_i64")]
    pub lease: i64,
}

/// The question "who leads `name`?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElectionName {
    #[serde(serialize_with = "ser_bytes")]
    pub name: Vec<u8>,
}

/// The current leader's key and the value it proclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LeaderResponse {
    pub header: Header,
    pub kv: Option<KeyValue>,
}

/// A user's credentials.
#[derive(Serialize)]
pub struct Authenticate<'a> {
    pub name: &'a str,
    pub password: &'a str,
}

/// The token a successful authentication returns.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Token {
    pub token: String,
}

/// An error as the gateway reports it: `{"error", "code", "message"}`
/// (etcd 3.4) or `{"code", "message", "details"}` (later releases); a
/// stream (keep-alive) adds `grpc_code` and `http_code`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// The gRPC status code (e.g. 5 not found, 14 unavailable, 16
    /// unauthenticated).
    #[serde(alias = "grpc_code")]
    pub code: i32,
    pub message: String,
    pub error: String,
}

impl ErrorBody {
    /// What etcd said, whichever field it put it in.
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn ser_bytes<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(v))
}

fn ser_i64<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// base64 text (absent: empty).
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = Option::<String>::deserialize(d)?.unwrap_or_default();
    STANDARD
        .decode(text.as_bytes())
        .map_err(|e| de::Error::custom(format!("{text:?} is not base64: {e}")))
}

fn de_bytes_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    Option::<Vec<String>>::deserialize(d)?
        .unwrap_or_default()
        .iter()
        .map(|t| {
            STANDARD
                .decode(t.as_bytes())
                .map_err(|e| de::Error::custom(format!("{t:?} is not base64: {e}")))
        })
        .collect()
}

/// An `int64`: a JSON string as protobuf's mapping writes it, or a number.
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Option::<Int>::deserialize(d)? {
        None => Ok(0),
        Some(Int::Number(n)) => Ok(n),
        Some(Int::Text(t)) => t
            .parse()
            .map_err(|_| de::Error::custom(format!("{t:?} is not an int64"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_range_answer_decodes_base64_and_int64_strings() {
        // As etcd 3.4's gateway answers.
        let body = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"},
            "kvs":[{"key":"ZWwvMzkwZGEyM2M2NTYwNjUwNQ==","create_revision":"2","mod_revision":"2","version":"1","value":"YQ==","lease":"4111120415141684485"}],"count":"1"}"#;
        let r: RangeResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.header.revision, 3);
        assert_eq!(r.count, 1);
        let kv = &r.kvs[0];
        assert_eq!(kv.key, b"el/390da23c65606505");
        assert_eq!(kv.value, b"a");
        assert_eq!((kv.create_revision, kv.version), (2, 1));
        assert_eq!(kv.lease, 4111120415141684485);
    }

    #[test]
    fn zero_values_left_out_read_as_zero() {
        let r: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"1"}}"#).unwrap();
        assert!(r.kvs.is_empty() && r.count == 0 && !r.more);
        let kv: KeyValue = serde_json::from_str(r#"{"key":"YQ==","create_revision":5}"#).unwrap();
        assert_eq!((kv.value.len(), kv.create_revision, kv.lease), (0, 5, 0));
        let t: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"9"}}"#).unwrap();
        assert!(!t.succeeded);
    }

    #[test]
    fn bad_base64_and_bad_int64_are_errors_that_quote_the_value() {
        let e = serde_json::from_str::<KeyValue>(r#"{"key":"not base64!"}"#).unwrap_err();
        assert!(
            e.to_string().contains("\"not base64!\" is not base64"),
            "{e}"
        );
        let e = serde_json::from_str::<KeyValue>(r#"{"lease":"12x"}"#).unwrap_err();
        assert!(e.to_string().contains("\"12x\" is not an int64"), "{e}");
    }

    #[test]
    fn requests_encode_bytes_as_base64_and_int64_as_strings() {
        let put = Put {
            key: b"promshard/lab/drained/n1".to_vec(),
            value: vec![],
            lease: 7587,
        };
        assert_eq!(
            serde_json::to_value(&put).unwrap(),
            json!({"key": "cHJvbXNoYXJkL2xhYi9kcmFpbmVkL24x", "value": "", "lease": "7587"})
        );
        let put = Put { lease: 0, ..put };
        assert!(serde_json::to_value(&put).unwrap().get("lease").is_none());
        assert_eq!(
            serde_json::to_value(LeaseTimeToLive { id: -5, keys: true }).unwrap(),
            json!({"ID": "-5", "keys": true})
        );
    }

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(
            serde_json::to_value(Range::prefix("p/")).unwrap(),
            json!({"key": "cC8=", "range_end": "cDA="})
        );
        assert_eq!(
            serde_json::to_value(Range::key("k")).unwrap(),
            json!({"key": "aw=="})
        );
    }

    #[test]
    fn a_txn_encodes_compares_and_operations_as_the_gateway_reads_them() {
        let txn = Txn {
            compare: vec![
                Compare::CreateRevision(b"lead".to_vec(), CompareOp::Equal, 42),
                Compare::Value(b"v".to_vec(), CompareOp::NotEqual, b"x".to_vec()),
            ],
            success: vec![Op::Put(Put {
                key: b"k".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
            })],
            failure: vec![Op::Range(Range::key("k")), Op::Delete(Range::prefix("d"))],
        };
        assert_eq!(
            serde_json::to_value(&txn).unwrap(),
            json!({
                "compare": [
                    {"target": "CREATE", "create_revision": "42", "key": "bGVhZA==", "result": "EQUAL"},
                    {"target": "VALUE", "value": "eA==", "key": "dg==", "result": "NOT_EQUAL"}
                ],
                "success": [{"request_put": {"key": "aw==", "value": "MQ=="}}],
                "failure": [
                    {"request_range": {"key": "aw=="}},
                    {"request_delete_range": {"key": "ZA==", "range_end": "ZQ=="}}
                ]
            })
        );
    }

    #[test]
    fn txn_answers_decode_each_operation() {
        let body = r#"{"header":{"revision":"10"},"succeeded":true,"responses":[
            {"response_put":{"header":{"revision":"10"}}},
            {"response_range":{"header":{},"kvs":[{"key":"aw==","value":"MQ=="}],"count":"1"}},
            {"response_delete_range":{"deleted":"2"}}]}"#;
        let t: TxnResponse = serde_json::from_str(body).unwrap();
        assert!(t.succeeded);
        assert!(matches!(&t.responses[0], OpResponse::Put(h) if h.header.revision == 10));
        assert!(matches!(&t.responses[1], OpResponse::Range(r) if r.kvs[0].value == b"1"));
        assert!(matches!(&t.responses[2], OpResponse::Delete(d) if d.deleted == 2));
    }

    #[test]
    fn lease_answers_decode() {
        let ttl: LeaseTtl = serde_json::from_str(
            r#"{"ID":"4111120415141684498","TTL":"59","grantedTTL":"60","keys":["ZWwvMzkw"]}"#,
        )
        .unwrap();
        assert_eq!((ttl.ttl, ttl.granted_ttl), (59, 60));
        assert_eq!(ttl.keys, [b"el/390".to_vec()]);
        // A lease that is gone: TTL -1, no keys.
        let gone: LeaseTtl = serde_json::from_str(r#"{"ID":"123","TTL":"-1"}"#).unwrap();
        assert!(gone.ttl < 0 && gone.keys.is_empty());
        let kept: KeepAliveStream =
            serde_json::from_str(r#"{"result":{"ID":"7","TTL":"60"}}"#).unwrap();
        assert_eq!(kept.result.unwrap().ttl, 60);
        // Renewing a lease that is gone: no TTL.
        let lost: KeepAliveStream =
            serde_json::from_str(r#"{"result":{"header":{},"ID":"123"}}"#).unwrap();
        assert_eq!(lost.result.unwrap().ttl, 0);
        let failed: KeepAliveStream = serde_json::from_str(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        )
        .unwrap();
        let e = failed.error.unwrap();
        assert_eq!((e.code, e.text()), (14, "etcdserver: no leader"));
    }

    #[test]
    fn election_answers_decode() {
        let won: CampaignResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"leader":{"name":"ZWw=","key":"ZWwvMzkw","rev":"2","lease":"4111120415141684485"}}"#,
        )
        .unwrap();
        assert_eq!(won.leader.key, b"el/390");
        assert_eq!((won.leader.rev, won.leader.lease), (2, 4111120415141684485));
        let leader: LeaderResponse = serde_json::from_str(
            r#"{"kv":{"key":"ZWwvMzkw","create_revision":"5","value":"Yw=="}}"#,
        )
        .unwrap();
        assert_eq!(leader.kv.unwrap().value, b"c");
    }

    #[test]
    fn both_gateway_error_shapes_decode() {
        let v34: ErrorBody = serde_json::from_str(
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        )
        .unwrap();
        assert_eq!(
            (v34.code, v34.text()),
            (5, "etcdserver: requested lease not found")
        );
        let later: ErrorBody = serde_json::from_str(
            r#"{"code":16,"message":"etcdserver: invalid auth token","details":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (later.code, later.text()),
            (16, "etcdserver: invalid auth token")
        );
    }
}
