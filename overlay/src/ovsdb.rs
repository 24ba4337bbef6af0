//! A small OVSDB client (RFC 7047 JSON-RPC 1.0 over a stream socket).
//!
//! Why our own: the Rust crates that speak OVSDB are unmaintained or read-only (no `transact`), and
//! shelling out to `ovs-vsctl` gives us no typed errors and one process per step. We need only a
//! handful of operations on the `Open_vSwitch` database, so a ~small, fully tested client is cheaper
//! than a dependency.
//!
//! Design: one request in flight at a time (`&mut self`), no background task. While waiting for a
//! reply we also answer the server's `echo` requests (the server's inactivity probe) and drop
//! notifications, so a long-lived connection stays up. The wire has no message delimiters: the
//! [`Framer`] splits the byte stream into top-level JSON values.
//!
//! The "ensure" operations are idempotent: they read first, then write inside a transaction that
//! starts with a `wait` op asserting what they read, so a concurrent change aborts the transaction
//! (and we retry once) instead of creating a duplicate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// The database the switch uses.
pub const DB: &str = "Open_vSwitch";

/// Refuse single messages above this size: a peer that never closes a brace must not eat memory.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Errors of the OVSDB client.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The unix socket could not be connected.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("i/o on OVSDB connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before replying to this method.
    #[error("server closed the connection while waiting for the reply to `{0}`")]
    Closed(String),
    /// The server did not reply in time.
    #[error("no reply to `{method}` within {after:?}")]
    Timeout {
        /// The JSON-RPC method.
        method: String,
        /// How long we waited.
        after: Duration,
    },
    /// The server sent something that is not a JSON-RPC message.
    #[error("malformed message from server: {0}")]
    Malformed(String),
    /// The server answered with a JSON-RPC error.
    #[error("server rejected `{method}`: {error}")]
    Rpc {
        /// The JSON-RPC method.
        method: String,
        /// The server's error object.
        error: Value,
    },
    /// One operation of a transaction failed (and the transaction with it).
    #[error("transaction operation {index} ({op}) failed: {error}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Op {
        /// The operation's index in the transaction.
        index: usize,
        /// The operation (`insert`, `mutate`, ...).
        op: String,
        /// The server's error tag.
        error: String,
        /// The server's explanation, if any.
        details: Option<String>,
    },
    /// A row that must exist does not (no root row, no such bridge).
    #[error("{0}")]
    NotFound(String),
    /// The database kept changing under the request.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

type Result<T, E = OvsdbError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Framing

/// Splits a byte stream into complete top-level JSON texts (objects or arrays).
///
/// It tracks nesting depth outside of strings and the string/escape state inside them, so braces in
/// strings do not confuse it; it does not validate JSON (serde_json does that per message).
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for the current message.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
}

impl Framer {
    /// A framer with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Take the next complete message, if the buffer holds one.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>> {
        // Skip whitespace between messages.
        if self.depth == 0 && !self.in_string {
            let ws = self.buf[self.scanned..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if self.scanned == 0 && ws > 0 {
                self.buf.drain(..ws);
            }
        }
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' if self.depth > 0 => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        if self.depth == 0 {
                            return Err(
                                self.bad(format!("unbalanced '{}' at top level", b as char))
                            );
                        }
                        self.depth -= 1;
                        if self.depth == 0 {
                            let msg: Vec<u8> = self.buf.drain(..=i).collect();
                            self.scanned = 0;
                            return Ok(Some(msg));
                        }
                    }
                    c if self.depth == 0 && !c.is_ascii_whitespace() => {
                        return Err(self.bad(format!("unexpected byte 0x{c:02x} between messages")));
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.scanned = i;
        if self.buf.len() > MAX_MESSAGE_BYTES {
            return Err(self.bad(format!("message exceeds {MAX_MESSAGE_BYTES} bytes")));
        }
        Ok(None)
    }

    fn bad(&mut self, why: String) -> OvsdbError {
        // The stream is unusable after a framing error; drop what we have.
        *self = Framer::default();
        OvsdbError::Malformed(why)
    }
}

// ---------------------------------------------------------------------------------------------
// OVSDB data helpers (RFC 7047 §5.1 notation)

/// `["set", [...]]` from atoms.
pub fn set<I: IntoIterator<Item = Value>>(items: I) -> Value {
    json!(["set", items.into_iter().collect::<Vec<_>>()])
}

/// `["map", [[k, v], ...]]` from string pairs.
pub fn map<'a, I: IntoIterator<Item = (&'a str, &'a str)>>(items: I) -> Value {
    json!([
        "map",
        items
            .into_iter()
            .map(|(k, v)| json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

/// Read a set column: a bare atom is a one-element set (RFC 7047 §5.1).
pub fn set_items(v: &Value) -> Result<Vec<Value>> {
    match v.as_array() {
        Some(a) if a.len() == 2 && a[0] == "set" => a[1]
            .as_array()
            .cloned()
            .ok_or_else(|| OvsdbError::Malformed(format!("set without a list: {v}"))),
        _ => Ok(vec![v.clone()]),
    }
}

/// Read a `["uuid", "..."]` atom.
pub fn uuid_of(v: &Value) -> Result<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(u)]) if tag == "uuid" => Ok(u.clone()),
        _ => Err(OvsdbError::Malformed(format!(
            "expected [\"uuid\", ..], got {v}"
        ))),
    }
}

/// Read a string→string map column.
pub fn map_items(v: &Value) -> Result<BTreeMap<String, String>> {
    let bad = || OvsdbError::Malformed(format!("expected [\"map\", [[k, v], ..]], got {v}"));
    let a = v
        .as_array()
        .filter(|a| a.len() == 2 && a[0] == "map")
        .ok_or_else(bad)?;
    let pairs = a[1].as_array().ok_or_else(bad)?;
    let mut m = BTreeMap::new();
    for p in pairs {
        match p.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => {
                m.insert(k.clone(), v.clone());
            }
            _ => return Err(bad()),
        }
    }
    Ok(m)
}

/// An optional integer column (`ofport`): an integer, or an empty set when unset.
fn opt_int(v: &Value) -> Result<Option<i64>> {
    if let Some(i) = v.as_i64() {
        return Ok(Some(i));
    }
    let items = set_items(v)?;
    match items.as_slice() {
        [] => Ok(None),
        [x] => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| OvsdbError::Malformed(format!("expected integer, got {v}"))),
        _ => Err(OvsdbError::Malformed(format!(
            "expected at most one integer, got {v}"
        ))),
    }
}

fn str_field<'a>(row: &'a Value, col: &str) -> Result<&'a str> {
    row.get(col)
        .and_then(Value::as_str)
        .ok_or_else(|| OvsdbError::Malformed(format!("row lacks string column `{col}`: {row}")))
}

fn rows_of(result: &Value) -> Result<&Vec<Value>> {
    result
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| OvsdbError::Malformed(format!("select result lacks rows: {result}")))
}

// ---------------------------------------------------------------------------------------------
// Typed requests

/// Options for [`OvsdbClient::ensure_bridge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeOptions {
    /// `netdev` (userspace) here: there is no OvS kernel module.
    pub datapath_type: String,
    /// OpenFlow versions the bridge accepts; we speak 1.3 (bundles, `-O OpenFlow13`).
    pub protocols: Vec<String>,
    /// `secure` = no implicit flows when a controller is set; None leaves OvS's default.
    pub fail_mode: Option<String>,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        BridgeOptions {
            datapath_type: "netdev".into(),
            protocols: vec![
                "OpenFlow10".into(),
                "OpenFlow13".into(),
                "OpenFlow14".into(),
            ],
            fail_mode: None,
        }
    }
}

/// The kind of an OvS interface, with its type-specific options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// An existing kernel netdev (veth end, tap) attached by name.
    System,
    /// A port OvS creates itself (a tap device with the netdev datapath).
    Internal,
    /// One end of a patch pair; `peer` names the other end's interface.
    Patch {
        /// The peer interface's name.
        peer: String,
    },
    /// A VXLAN tunnel; key None = 0 (VNI), dst_port None = 4789.
    Vxlan {
        /// The tunnel's remote endpoint.
        remote_ip: String,
        /// The VNI.
        key: Option<u32>,
        /// The UDP port.
        dst_port: Option<u16>,
    },
}

impl PortKind {
    /// The `Interface.type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            PortKind::System => "",
            PortKind::Internal => "internal",
            PortKind::Patch { .. } => "patch",
            PortKind::Vxlan { .. } => "vxlan",
        }
    }

    fn options(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        match self {
            PortKind::System | PortKind::Internal => {}
            PortKind::Patch { peer } => {
                m.insert("peer".into(), peer.clone());
            }
            PortKind::Vxlan {
                remote_ip,
                key,
                dst_port,
            } => {
                m.insert("remote_ip".into(), remote_ip.clone());
                if let Some(k) = key {
                    m.insert("key".into(), k.to_string());
                }
                if let Some(p) = dst_port {
                    m.insert("dst_port".into(), p.to_string());
                }
            }
        }
        m
    }
}

/// A port with one interface of the same name (what `ovs-vsctl add-port` makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port and interface name.
    pub name: String,
    /// The interface type.
    pub kind: PortKind,
    /// Ask OvS for a fixed OpenFlow port number (flows can then be written before the port exists).
    pub ofport_request: Option<u16>,
}

impl PortSpec {
    /// A port of `kind` named `name`, OvS choosing the OpenFlow number.
    pub fn new(name: impl Into<String>, kind: PortKind) -> Self {
        PortSpec {
            name: name.into(),
            kind,
            ofport_request: None,
        }
    }
}

/// A port as read back from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// `Interface.type` of its (first) interface; "" = system.
    pub iface_type: String,
    /// OpenFlow port number; None until ovs-vswitchd has assigned one, Some(-1) if it failed.
    pub ofport: Option<i64>,
    /// `Interface.options` (tunnel and patch settings).
    pub options: BTreeMap<String, String>,
    /// `Interface.error` if ovs-vswitchd could not open it.
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The client

/// An OVSDB connection. Not `Clone`: one request in flight at a time; open several if needed.
pub struct OvsdbClient<S = UnixStream> {
    stream: S,
    framer: Framer,
    next_id: u64,
    timeout: Duration,
}

impl<S> std::fmt::Debug for OvsdbClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvsdbClient")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl OvsdbClient<UnixStream> {
    /// Connect to a unix socket path (`/run/openvswitch/db.sock`, or an [`crate::OvsInstance`]'s).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let s = UnixStream::connect(p)
            .await
            .map_err(|source| OvsdbError::Connect {
                path: p.display().to_string(),
                source,
            })?;
        Ok(Self::new(s))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> OvsdbClient<S> {
    /// Wrap an established stream (tests use an in-memory duplex).
    pub fn new(stream: S) -> Self {
        OvsdbClient {
            stream,
            framer: Framer::new(),
            next_id: 1,
            timeout: Duration::from_secs(10),
        }
    }

    /// Per-request reply deadline (default 10 s).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Send one JSON-RPC request and return its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"method": method, "params": params, "id": id});
        tracing::trace!(%req, "ovsdb >");
        let bytes = serde_json::to_vec(&req)
            .map_err(|e| OvsdbError::Malformed(format!("cannot encode request: {e}")))?;
        self.stream.write_all(&bytes).await?;
        self.stream.flush().await?;
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.await_reply(method, id)).await {
            Ok(r) => r,
            Err(_) => Err(OvsdbError::Timeout {
                method: method.into(),
                after: timeout,
            }),
        }
    }

    async fn read_message(&mut self, method: &str) -> Result<Value> {
        loop {
            if let Some(msg) = self.framer.next_message()? {
                return serde_json::from_slice(&msg).map_err(|e| {
                    OvsdbError::Malformed(format!(
                        "{e}: {}",
                        String::from_utf8_lossy(&msg[..msg.len().min(200)])
                    ))
                });
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(OvsdbError::Closed(method.into()));
            }
            self.framer.push(&chunk[..n]);
        }
    }

    async fn await_reply(&mut self, method: &str, id: u64) -> Result<Value> {
        loop {
            let msg = self.read_message(method).await?;
            let obj = msg
                .as_object()
                .ok_or_else(|| OvsdbError::Malformed(format!("message is not an object: {msg}")))?;
            if let Some(m) = obj.get("method") {
                // A request or notification from the server.
                if m == "echo" {
                    let reply = json!({"result": obj.get("params").cloned().unwrap_or(json!([])), "error": null, "id": obj.get("id").cloned().unwrap_or(Value::Null)});
                    let bytes = serde_json::to_vec(&reply)
                        .map_err(|e| OvsdbError::Malformed(e.to_string()))?;
                    self.stream.write_all(&bytes).await?;
                    self.stream.flush().await?;
                    tracing::trace!("answered server echo");
                }
                continue;
            }
            let rid = obj
                .get("id")
                .ok_or_else(|| OvsdbError::Malformed(format!("reply without id: {msg}")))?;
            if rid.as_u64() != Some(id) {
                // A late reply to an earlier request that timed out: not ours, skip it.
                tracing::debug!(%rid, expected = id, "skipping reply with foreign id");
                continue;
            }
            let err = obj.get("error").unwrap_or(&Value::Null);
            if !err.is_null() {
                return Err(OvsdbError::Rpc {
                    method: method.into(),
                    error: err.clone(),
                });
            }
            return obj
                .get("result")
                .cloned()
                .ok_or_else(|| OvsdbError::Malformed(format!("reply without result: {msg}")));
        }
    }

    /// `echo`: checks the connection is alive (RFC 7047 §4.1.11).
    pub async fn echo(&mut self) -> Result<()> {
        let r = self.call("echo", json!(["mose"])).await?;
        if r != json!(["mose"]) {
            return Err(OvsdbError::Malformed(format!("echo returned {r}")));
        }
        Ok(())
    }

    /// `list_dbs`.
    pub async fn list_dbs(&mut self) -> Result<Vec<String>> {
        let r = self.call("list_dbs", json!([])).await?;
        let a = r
            .as_array()
            .ok_or_else(|| OvsdbError::Malformed(format!("list_dbs result not a list: {r}")))?;
        a.iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| OvsdbError::Malformed(format!("db name not a string: {v}")))
            })
            .collect()
    }

    /// `transact` on [`DB`]; every operation's failure (and a commit failure) becomes an error.
    pub async fn transact(&mut self, ops: Vec<Value>) -> Result<Vec<Value>> {
        let n = ops.len();
        let names: Vec<String> = ops
            .iter()
            .map(|o| {
                o.get("op")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        let mut params = vec![json!(DB)];
        params.extend(ops);
        let r = self.call("transact", Value::Array(params)).await?;
        let results = r
            .as_array()
            .ok_or_else(|| OvsdbError::Malformed(format!("transact result not a list: {r}")))?;
        for (index, res) in results.iter().enumerate() {
            if let Some(e) = res.get("error") {
                return Err(OvsdbError::Op {
                    index,
                    op: names.get(index).cloned().unwrap_or_else(|| "commit".into()),
                    error: e
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| e.to_string()),
                    details: res.get("details").and_then(Value::as_str).map(String::from),
                });
            }
        }
        if results.len() < n {
            return Err(OvsdbError::Malformed(format!(
                "transact returned {} results for {n} operations",
                results.len()
            )));
        }
        Ok(results[..n].to_vec())
    }

    // --------------------------------------------------------------------------------------------
    // Bridges

    async fn bridge_row(&mut self, name: &str) -> Result<Option<Value>> {
        let r = self
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": [["name", "==", name]],
                "columns": ["_uuid", "datapath_type", "protocols", "fail_mode", "ports"]}),
            ])
            .await?;
        Ok(rows_of(&r[0])?.first().cloned())
    }

    /// Make sure bridge `name` exists with `opts`; returns its row UUID. Safe to repeat: an
    /// existing bridge is updated in place (only if something differs), never duplicated.
    pub async fn ensure_bridge(&mut self, name: &str, opts: &BridgeOptions) -> Result<String> {
        validate_name(name)?;
        for attempt in 0..3 {
            let protocols = set(opts.protocols.iter().map(|p| json!(p)));
            let fail_mode = match &opts.fail_mode {
                Some(m) => json!(m),
                None => set([]),
            };
            if let Some(row) = self.bridge_row(name).await? {
                let uuid = uuid_of(row.get("_uuid").unwrap_or(&Value::Null))?;
                let same_dp = row.get("datapath_type").and_then(Value::as_str)
                    == Some(opts.datapath_type.as_str());
                let mut have: Vec<String> =
                    set_items(row.get("protocols").unwrap_or(&Value::Null))?
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect();
                have.sort();
                let mut want = opts.protocols.clone();
                want.sort();
                let have_fm = set_items(row.get("fail_mode").unwrap_or(&set([])))?
                    .first()
                    .and_then(|v| v.as_str().map(String::from));
                if same_dp && have == want && have_fm == opts.fail_mode {
                    return Ok(uuid);
                }
                self.transact(vec![json!({"op": "update", "table": "Bridge", "where": [["_uuid", "==", ["uuid", uuid]]],
                    "row": {"datapath_type": opts.datapath_type, "protocols": protocols, "fail_mode": fail_mode}})])
                .await?;
                return Ok(uuid);
            }
            // Create bridge + its local port/interface (same name, type internal), like ovs-vsctl.
            let ops = vec![
                json!({"op": "wait", "table": "Bridge", "where": [["name", "==", name]], "columns": ["name"],
                       "until": "==", "rows": [], "timeout": 0}),
                json!({"op": "insert", "table": "Interface", "row": {"name": name, "type": "internal"}, "uuid-name": "iface"}),
                json!({"op": "insert", "table": "Port", "row": {"name": name, "interfaces": ["named-uuid", "iface"]}, "uuid-name": "port"}),
                json!({"op": "insert", "table": "Bridge", "uuid-name": "br", "row": {"name": name,
                       "ports": ["named-uuid", "port"], "datapath_type": opts.datapath_type,
                       "protocols": protocols, "fail_mode": fail_mode}}),
                json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                       "mutations": [["bridges", "insert", ["named-uuid", "br"]]]}),
            ];
            match self.transact(ops).await {
                Ok(res) => {
                    if res[4].get("count").and_then(Value::as_i64) != Some(1) {
                        return Err(OvsdbError::NotFound(
                            "no Open_vSwitch root row (was `ovs-vsctl init` run?)".into(),
                        ));
                    }
                    return uuid_of(res[3].get("uuid").unwrap_or(&Value::Null));
                }
                // Someone created it between our read and write: read again.
                Err(OvsdbError::Op { index: 0, .. }) if attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(OvsdbError::Conflict(format!(
            "bridge {name} kept changing while we tried to create it"
        )))
    }

    /// Delete bridge `name` (with its ports). Returns false if it did not exist.
    pub async fn delete_bridge(&mut self, name: &str) -> Result<bool> {
        let Some(row) = self.bridge_row(name).await? else {
            return Ok(false);
        };
        let uuid = uuid_of(row.get("_uuid").unwrap_or(&Value::Null))?;
        self.transact(vec![
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
            "mutations": [["bridges", "delete", ["uuid", uuid]]]}),
        ])
        .await?;
        Ok(true)
    }

    /// Names of all bridges.
    pub async fn list_bridges(&mut self) -> Result<Vec<String>> {
        let r = self
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": [], "columns": ["name"]}),
            ])
            .await?;
        let mut v: Vec<String> = rows_of(&r[0])?
            .iter()
            .map(|row| str_field(row, "name").map(String::from))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    }

    // --------------------------------------------------------------------------------------------
    // Ports

    /// Make sure `spec` is a port of `bridge` with the given type/options. Safe to repeat; an
    /// existing port whose interface type/options differ is updated in place. A port of that name
    /// on another bridge is an error (moving ports silently would hide wiring mistakes).
    pub async fn ensure_port(&mut self, bridge: &str, spec: &PortSpec) -> Result<()> {
        validate_name(&spec.name)?;
        let opts = spec.kind.options();
        let opts_json = map(opts.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // The mutable columns; `name` is immutable in OVSDB, so it is only added for the insert.
        let mut iface_cols = json!({"type": spec.kind.type_name(), "options": opts_json});
        if let Some(r) = spec.ofport_request {
            iface_cols["ofport_request"] = json!(r);
        }
        let mut iface_row = iface_cols.clone();
        iface_row["name"] = json!(spec.name);
        for attempt in 0..3 {
            let r = self
                .transact(vec![
                    json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["_uuid", "ports"]}),
                    json!({"op": "select", "table": "Port", "where": [["name", "==", spec.name]], "columns": ["_uuid", "interfaces"]}),
                    json!({"op": "select", "table": "Interface", "where": [["name", "==", spec.name]],
                           "columns": ["_uuid", "type", "options", "ofport_request"]}),
                ])
                .await?;
            let br = rows_of(&r[0])?
                .first()
                .cloned()
                .ok_or_else(|| OvsdbError::NotFound(format!("bridge {bridge} does not exist")))?;
            let br_ports: Vec<String> = set_items(br.get("ports").unwrap_or(&set([])))?
                .iter()
                .map(uuid_of)
                .collect::<Result<_>>()?;
            let port = rows_of(&r[1])?.first().cloned();
            let iface = rows_of(&r[2])?.first().cloned();
            match (port, iface) {
                (Some(p), Some(i)) => {
                    let puuid = uuid_of(p.get("_uuid").unwrap_or(&Value::Null))?;
                    if !br_ports.contains(&puuid) {
                        return Err(OvsdbError::Conflict(format!(
                            "port {} exists on another bridge than {bridge}",
                            spec.name
                        )));
                    }
                    let same_type =
                        i.get("type").and_then(Value::as_str) == Some(spec.kind.type_name());
                    let same_opts = map_items(i.get("options").unwrap_or(&map([])))? == opts;
                    let have_req = opt_int(i.get("ofport_request").unwrap_or(&set([])))?;
                    let same_req = match spec.ofport_request {
                        None => true,
                        Some(r) => have_req == Some(r as i64),
                    };
                    if same_type && same_opts && same_req {
                        return Ok(());
                    }
                    let iuuid = uuid_of(i.get("_uuid").unwrap_or(&Value::Null))?;
                    self.transact(vec![json!({"op": "update", "table": "Interface",
                        "where": [["_uuid", "==", ["uuid", iuuid]]], "row": iface_cols})])
                        .await?;
                    return Ok(());
                }
                (None, None) => {}
                _ => {
                    return Err(OvsdbError::Conflict(format!(
                    "port/interface {} half exists (a port with a differently named interface?)",
                    spec.name
                )))
                }
            }
            let ops = vec![
                json!({"op": "wait", "table": "Port", "where": [["name", "==", spec.name]], "columns": ["name"],
                       "until": "==", "rows": [], "timeout": 0}),
                json!({"op": "insert", "table": "Interface", "row": iface_row, "uuid-name": "iface"}),
                json!({"op": "insert", "table": "Port", "row": {"name": spec.name, "interfaces": ["named-uuid", "iface"]},
                       "uuid-name": "port"}),
                json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                       "mutations": [["ports", "insert", ["named-uuid", "port"]]]}),
            ];
            match self.transact(ops).await {
                Ok(res) => {
                    if res[3].get("count").and_then(Value::as_i64) != Some(1) {
                        return Err(OvsdbError::NotFound(format!(
                            "bridge {bridge} vanished while adding {}",
                            spec.name
                        )));
                    }
                    return Ok(());
                }
                Err(OvsdbError::Op { index: 0, .. }) if attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(OvsdbError::Conflict(format!(
            "port {} kept changing while we tried to add it",
            spec.name
        )))
    }

    /// Remove port `name` from `bridge` (its Port/Interface rows are garbage-collected by the
    /// server). Returns false if it was not there.
    pub async fn remove_port(&mut self, bridge: &str, name: &str) -> Result<bool> {
        let r = self
            .transact(vec![json!({"op": "select", "table": "Port", "where": [["name", "==", name]], "columns": ["_uuid"]})])
            .await?;
        let Some(p) = rows_of(&r[0])?.first().cloned() else {
            return Ok(false);
        };
        let puuid = uuid_of(p.get("_uuid").unwrap_or(&Value::Null))?;
        let res = self
            .transact(vec![
                json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                "mutations": [["ports", "delete", ["uuid", puuid]]]}),
            ])
            .await?;
        if res[0].get("count").and_then(Value::as_i64) != Some(1) {
            return Err(OvsdbError::NotFound(format!(
                "bridge {bridge} does not exist"
            )));
        }
        Ok(true)
    }

    /// Wait until ovs-vswitchd has applied every change made so far (what `ovs-vsctl` does unless
    /// `--no-wait`): bump `next_cfg`, then poll until `cur_cfg` reaches it. Needed before a device
    /// of a removed port's name is recreated: if ovs-vswitchd sees "removed" and "added again" in
    /// one reconfiguration pass, it keeps its packet socket on the old, deleted device.
    pub async fn sync(&mut self, timeout: Duration) -> Result<()> {
        let r = self
            .transact(vec![
                json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]}),
                json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
            ])
            .await?;
        let want = rows_of(&r[1])?
            .first()
            .and_then(|row| row.get("next_cfg"))
            .and_then(Value::as_i64)
            .ok_or_else(|| OvsdbError::Malformed(format!("no next_cfg in {}", r[1])))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self
                .transact(vec![json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]})])
                .await?;
            let cur = rows_of(&r[0])?
                .first()
                .and_then(|row| row.get("cur_cfg"))
                .and_then(Value::as_i64);
            if cur.is_some_and(|c| c >= want) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OvsdbError::Timeout {
                    method: format!("ovs-vswitchd to apply configuration {want} (at {cur:?})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ports of `bridge` (including its local port) with interface type, ofport and options.
    pub async fn list_ports(&mut self, bridge: &str) -> Result<Vec<PortInfo>> {
        let r = self
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["ports"]}),
                json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "interfaces"]}),
                json!({"op": "select", "table": "Interface", "where": [],
                       "columns": ["_uuid", "name", "type", "ofport", "options", "error"]}),
            ])
            .await?;
        let br = rows_of(&r[0])?
            .first()
            .cloned()
            .ok_or_else(|| OvsdbError::NotFound(format!("bridge {bridge} does not exist")))?;
        let wanted: Vec<String> = set_items(br.get("ports").unwrap_or(&set([])))?
            .iter()
            .map(uuid_of)
            .collect::<Result<_>>()?;
        let mut ifaces = BTreeMap::new();
        for row in rows_of(&r[2])? {
            ifaces.insert(
                uuid_of(row.get("_uuid").unwrap_or(&Value::Null))?,
                row.clone(),
            );
        }
        let mut out = Vec::new();
        for row in rows_of(&r[1])? {
            let puuid = uuid_of(row.get("_uuid").unwrap_or(&Value::Null))?;
            if !wanted.contains(&puuid) {
                continue;
            }
            let name = str_field(row, "name")?.to_string();
            let first_if = set_items(row.get("interfaces").unwrap_or(&set([])))?
                .first()
                .map(uuid_of)
                .transpose()?;
            let iface = first_if
                .and_then(|u| ifaces.get(&u))
                .ok_or_else(|| OvsdbError::Malformed(format!("port {name} has no interface")))?;
            let err = set_items(iface.get("error").unwrap_or(&set([])))?
                .first()
                .and_then(|v| v.as_str().map(String::from));
            out.push(PortInfo {
                name,
                iface_type: str_field(iface, "type")?.to_string(),
                ofport: opt_int(iface.get("ofport").unwrap_or(&set([])))?,
                options: map_items(iface.get("options").unwrap_or(&map([])))?,
                error: err,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The OpenFlow port number of interface `iface` (None: not assigned yet or no such interface).
    pub async fn ofport(&mut self, iface: &str) -> Result<Option<i64>> {
        let r = self
            .transact(vec![json!({"op": "select", "table": "Interface", "where": [["name", "==", iface]], "columns": ["ofport"]})])
            .await?;
        match rows_of(&r[0])?.first() {
            None => Ok(None),
            Some(row) => opt_int(row.get("ofport").unwrap_or(&set([]))),
        }
    }

    /// Poll until ovs-vswitchd has given `iface` a valid OpenFlow port number.
    pub async fn wait_ofport(&mut self, iface: &str, timeout: Duration) -> Result<u32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(n) = self.ofport(iface).await? {
                if n > 0 {
                    // Positive, and OpenFlow port numbers are 32-bit.
                    return Ok(u32::try_from(n).unwrap_or(u32::MAX));
                }
                if n == -1 {
                    let r = self
                        .transact(vec![json!({"op": "select", "table": "Interface", "where": [["name", "==", iface]], "columns": ["error"]})])
                        .await?;
                    let why = rows_of(&r[0])?
                        .first()
                        .map(|row| row["error"].to_string())
                        .unwrap_or_default();
                    return Err(OvsdbError::Conflict(format!(
                        "ovs-vswitchd could not open {iface}: {why}"
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OvsdbError::Timeout {
                    method: format!("ofport of {iface}"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// OvS names become netdev names (IFNAMSIZ = 16 incl. NUL) and socket file names.
fn validate_name(name: &str) -> Result<()> {
    if !crate::netns::ifname_ok(name) {
        return Err(OvsdbError::Invalid(format!(
            "invalid bridge/port name {name:?}: 1-15 chars of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    // Replies recorded from ovsdb-server 3.1.0 (Debian 12) for the requests our client sends;
    // `$ID` is replaced with the id of the request being answered.
    const ECHO: &str = r#"{"id":$ID,"result":["mose"],"error":null}"#;
    const NO_BRIDGE: &str = r#"{"id":$ID,"result":[{"rows":[]}],"error":null}"#;
    const BRIDGE_CREATED: &str = r#"{"id":$ID,"result":[{},{"uuid":["uuid","07880538-1371-4f3b-ba83-7479dc33c3b1"]},{"uuid":["uuid","f096353a-16da-4ded-8a87-2cf319a23302"]},{"uuid":["uuid","621515f1-82b2-4788-9061-a7ab374a70c3"]},{"count":1}],"error":null}"#;
    const BRIDGE_ROW: &str = r#"{"id":$ID,"result":[{"rows":[{"ports":["uuid","f096353a-16da-4ded-8a87-2cf319a23302"],"fail_mode":["set",[]],"_uuid":["uuid","621515f1-82b2-4788-9061-a7ab374a70c3"],"datapath_type":"netdev","protocols":["set",["OpenFlow10","OpenFlow13","OpenFlow14"]]}]}],"error":null}"#;
    const WAIT_FAILED: &str = r#"{"id":$ID,"result":[{"details":"\"where\" clause test failed","error":"timed out"},null],"error":null}"#;
    const SYNTAX_ERROR: &str = r#"{"id":$ID,"result":[{"syntax":"{\"op\":\"select\",\"table\":\"Nope\",\"where\":[]}","details":"Parsing ovsdb operation 1 of 1 failed: No table named Nope.","error":"syntax error"}],"error":null}"#;
    const UNKNOWN_METHOD: &str = r#"{"id":$ID,"error":"unknown method"}"#;
    const IFACE_NO_OFPORT: &str =
        r#"{"id":$ID,"result":[{"rows":[{"ofport":["set",[]]}]}],"error":null}"#;
    const IFACE_OFPORT_3: &str = r#"{"id":$ID,"result":[{"rows":[{"ofport":3}]}],"error":null}"#;

    /// A fake server: for each scripted reply, read one request, check its method, answer.
    /// Returns the client and a handle yielding the requests it saw.
    fn scripted(
        script: Vec<(&'static str, String)>,
    ) -> (
        OvsdbClient<DuplexStream>,
        tokio::task::JoinHandle<Vec<Value>>,
    ) {
        let (c, mut s) = duplex(1 << 16);
        let h = tokio::spawn(async move {
            let mut framer = Framer::new();
            let mut seen = Vec::new();
            for (method, reply) in script {
                let req: Value = loop {
                    if let Some(m) = framer.next_message().unwrap() {
                        break serde_json::from_slice(&m).unwrap();
                    }
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    framer.push(&b[..n]);
                };
                assert_eq!(req["method"], method, "{req}");
                let out = reply.replace("$ID", &req["id"].to_string());
                seen.push(req);
                s.write_all(out.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut client = OvsdbClient::new(c);
        client.set_timeout(Duration::from_millis(500));
        (client, h)
    }

    fn r(s: &str) -> String {
        s.to_string()
    }

    #[tokio::test]
    async fn echo_round_trip() {
        let (mut c, h) = scripted(vec![("echo", r(ECHO))]);
        c.echo().await.unwrap();
        assert_eq!(h.await.unwrap()[0]["params"], json!(["mose"]));
    }

    #[tokio::test]
    async fn ensure_bridge_creates_then_finds() {
        let (mut c, h) = scripted(vec![
            ("transact", r(NO_BRIDGE)),
            ("transact", r(BRIDGE_CREATED)),
            ("transact", r(BRIDGE_ROW)),
        ]);
        let opts = BridgeOptions::default();
        let u1 = c.ensure_bridge("br0", &opts).await.unwrap();
        let u2 = c.ensure_bridge("br0", &opts).await.unwrap();
        assert_eq!(u1, "621515f1-82b2-4788-9061-a7ab374a70c3");
        assert_eq!(u1, u2);
        let seen = h.await.unwrap();
        // The second call only read: the row already matched, so nothing was written.
        assert_eq!(seen.len(), 3);
        let create = &seen[1]["params"];
        assert_eq!(create[1]["op"], "wait");
        assert_eq!(create[4]["row"]["datapath_type"], "netdev");
        assert_eq!(
            create[4]["row"]["protocols"],
            json!(["set", ["OpenFlow10", "OpenFlow13", "OpenFlow14"]])
        );
    }

    #[tokio::test]
    async fn ensure_bridge_retries_when_someone_else_created_it() {
        let (mut c, _h) = scripted(vec![
            ("transact", r(NO_BRIDGE)),
            ("transact", r(WAIT_FAILED)),
            ("transact", r(BRIDGE_ROW)),
        ]);
        let u = c
            .ensure_bridge("br0", &BridgeOptions::default())
            .await
            .unwrap();
        assert_eq!(u, "621515f1-82b2-4788-9061-a7ab374a70c3");
    }

    #[tokio::test]
    async fn operation_errors_are_typed() {
        let (mut c, _h) = scripted(vec![("transact", r(SYNTAX_ERROR))]);
        let e = c
            .transact(vec![json!({"op": "select", "table": "Nope", "where": []})])
            .await
            .unwrap_err();
        match e {
            OvsdbError::Op {
                index,
                op,
                error,
                details,
            } => {
                assert_eq!(
                    (index, op.as_str(), error.as_str()),
                    (0, "select", "syntax error")
                );
                assert!(details.unwrap().contains("No table named Nope"));
            }
            other => panic!("wrong error {other:?}"),
        }
    }

    #[tokio::test]
    async fn rpc_errors_are_typed() {
        let (mut c, _h) = scripted(vec![("bogus", r(UNKNOWN_METHOD))]);
        let e = c.call("bogus", json!([])).await.unwrap_err();
        assert!(
            matches!(e, OvsdbError::Rpc { ref error, .. } if error == "unknown method"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn ofport_unset_then_set() {
        let (mut c, _h) = scripted(vec![
            ("transact", r(IFACE_NO_OFPORT)),
            ("transact", r(IFACE_OFPORT_3)),
        ]);
        assert_eq!(
            c.wait_ofport("p1", Duration::from_secs(1)).await.unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn server_echo_is_answered_while_waiting() {
        let (cl, mut s) = duplex(1 << 16);
        let mut c = OvsdbClient::new(cl);
        let server = tokio::spawn(async move {
            let mut b = vec![0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            let req: Value = serde_json::from_slice(&b[..n]).unwrap();
            // The server's inactivity probe arrives before our reply, split across two writes.
            s.write_all(br#"{"id":"echo","method":"echo","#)
                .await
                .unwrap();
            s.write_all(br#""params":[]}"#).await.unwrap();
            let n = s.read(&mut b).await.unwrap();
            let echo_reply: Value = serde_json::from_slice(&b[..n]).unwrap();
            // A notification and then the reply, in one write.
            let reply = ECHO.replace("$ID", &req["id"].to_string());
            s.write_all(
                format!(r#"{{"id":null,"method":"update","params":[null,{{}}]}} {reply}"#)
                    .as_bytes(),
            )
            .await
            .unwrap();
            echo_reply
        });
        c.echo().await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            json!({"id": "echo", "result": [], "error": null})
        );
    }

    async fn reply_with(raw: &'static str) -> OvsdbError {
        let (cl, mut s) = duplex(1 << 16);
        let mut c = OvsdbClient::new(cl);
        c.set_timeout(Duration::from_millis(300));
        let server = tokio::spawn(async move {
            let mut b = vec![0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            let req: Value = serde_json::from_slice(&b[..n]).unwrap();
            s.write_all(raw.replace("$ID", &req["id"].to_string()).as_bytes())
                .await
                .unwrap();
            // Keep the stream open briefly so "closed" is only reported when we close it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let e = c
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": []}),
            ])
            .await
            .unwrap_err();
        server.abort();
        e
    }

    #[tokio::test]
    async fn malformed_replies_are_errors_not_panics() {
        for raw in [
            r#"{"id":$ID,"result":{"rows":[]},"error":null}"#, // result not a list
            r#"{"id":$ID,"result":[],"error":null}"#,          // too few results
            r#"[1,2,3]"#,                                      // not an object
            r#"{"result":[{"rows":[]}],"error":null}"#,        // no id
            r#"{"id":$ID,"error":null}"#,                      // no result
            r#"{"id":$ID,"result":[{"rows":[]}],"error":nul}"#, // invalid JSON
            r#"}"#,                                            // unbalanced
            r#"x{"id":$ID}"#,                                  // garbage between messages
        ] {
            let e = reply_with(raw).await;
            assert!(matches!(e, OvsdbError::Malformed(_)), "{raw}: {e:?}");
        }
        // Well-formed transact, malformed content: caught by the typed readers.
        let (mut c, _h) = scripted(vec![
            (
                "transact",
                r(r#"{"id":$ID,"result":[{"nope":1}],"error":null}"#),
            ),
            (
                "transact",
                r(r#"{"id":$ID,"result":[{"rows":[{"ofport":"three"}]}],"error":null}"#),
            ),
        ]);
        assert!(matches!(
            c.list_bridges().await,
            Err(OvsdbError::Malformed(_))
        ));
        assert!(matches!(c.ofport("p").await, Err(OvsdbError::Malformed(_))));
    }

    #[tokio::test]
    async fn silence_times_out_and_eof_is_closed() {
        let (cl, s) = duplex(1 << 16);
        let mut c = OvsdbClient::new(cl);
        c.set_timeout(Duration::from_millis(50));
        assert!(matches!(c.echo().await, Err(OvsdbError::Timeout { .. })));
        drop(s);
        assert!(matches!(
            c.echo().await,
            Err(OvsdbError::Io(_) | OvsdbError::Closed(_))
        ));
    }

    #[test]
    fn framer_handles_strings_splits_and_garbage() {
        let mut f = Framer::new();
        f.push(br#" {"a":"}{\"[","b":[1,{"c":2}]}{"x""#);
        assert_eq!(
            f.next_message().unwrap().unwrap(),
            br#"{"a":"}{\"[","b":[1,{"c":2}]}"#.to_vec()
        );
        assert!(f.next_message().unwrap().is_none());
        f.push(br#":1}"#);
        assert_eq!(f.next_message().unwrap().unwrap(), br#"{"x":1}"#.to_vec());
        let mut f = Framer::new();
        f.push(b"42");
        assert!(matches!(f.next_message(), Err(OvsdbError::Malformed(_))));
    }

    #[test]
    fn data_helpers_reject_wrong_shapes() {
        assert_eq!(set_items(&json!("x")).unwrap(), vec![json!("x")]);
        assert!(set_items(&json!(["set", 1])).is_err());
        assert!(uuid_of(&json!(["named-uuid", "x"])).is_err());
        assert!(map_items(&json!(["map", [["k", 1]]])).is_err());
        assert_eq!(
            map_items(&json!(["map", [["k", "v"]]]))
                .unwrap()
                .get("k")
                .unwrap(),
            "v"
        );
        assert_eq!(opt_int(&json!(["set", []])).unwrap(), None);
        assert!(opt_int(&json!(["set", [1, 2]])).is_err());
    }

    #[tokio::test]
    async fn invalid_names_never_reach_the_server() {
        let (mut c, h) = scripted(vec![]);
        assert!(matches!(
            c.ensure_bridge("", &BridgeOptions::default()).await,
            Err(OvsdbError::Invalid(_))
        ));
        assert!(matches!(
            c.ensure_port("br0", &PortSpec::new("a/b", PortKind::System))
                .await,
            Err(OvsdbError::Invalid(_))
        ));
        drop(c);
        assert!(h.await.unwrap().is_empty());
    }
}
