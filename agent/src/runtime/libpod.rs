//! The libpod REST client: one [`Podman`] per API socket, container and image operations.
//! Checkpoint and restore live in [`super::checkpoint`].
//!
//! Every request goes to `/v4.0.0/libpod/...`: podman 4.x and 5.x both serve that prefix (5.x
//! keeps accepting 4.0.0 as its minimum libpod API version), so one client works on Debian 12's
//! 4.3 and on current hosts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::checkpoint::{archive_io, incomplete};
use tokio_util::io::ReaderStream;

use super::container::{
    ContainerInfo, ContainerStats, ContainerSummary, CreateResponse, CreateSpec, HostInfo,
    SpecGenerator, StatsEnvelope, VersionResponse, VolumeSummary,
};
use super::error::{Op, Result, RuntimeError};

/// Path prefix of every libpod request.
pub const API_PREFIX: &str = "/v4.0.0/libpod";

/// Deadline of ordinary (non-transfer) requests unless [`Podman::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunk size when streaming a file or pipe into a request body: large enough that per-chunk
/// overhead vanishes, small enough that memory stays flat.
pub(crate) const UPLOAD_CHUNK: usize = 256 * 1024;

/// A client of one podman API service (`podman system service unix://...`). Cheap to clone:
/// clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Podman {
    pub(crate) http: reqwest::Client,
    socket: PathBuf,
    pub(crate) timeout: Duration,
}

impl Podman {
    /// A client for the service listening on `socket`. Nothing is connected yet: a dead socket
    /// shows up as [`RuntimeError::Unreachable`] on the first request.
    pub fn new(socket: impl Into<PathBuf>) -> Result<Podman> {
        let socket = socket.into();
        let http = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .connect_timeout(Duration::from_secs(5))
            // Podman closes idle API connections itself; a stale pooled one would fail the next request.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RuntimeError::Protocol {
                op: Op::Version,
                target: socket.display().to_string(),
                why: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Podman {
            http,
            socket,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Deadline for ordinary requests (create, start, inspect, ...). Transfers take their own.
    pub fn with_timeout(mut self, timeout: Duration) -> Podman {
        self.timeout = timeout;
        self
    }

    /// The podman API socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `http://podman/v4.0.0/libpod<path>`; the host part is ignored on a unix socket.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://podman{API_PREFIX}{path}")
    }

    /// Map a reqwest failure: no connection, deadline, or anything else.
    pub(crate) fn transport_error(&self, op: Op, target: &str, e: reqwest::Error) -> RuntimeError {
        if e.is_connect() {
            RuntimeError::Unreachable {
                op,
                target: target.into(),
                socket: self.socket.clone(),
                source: e,
            }
        } else {
            RuntimeError::Transport {
                op,
                target: target.into(),
                source: e,
            }
        }
    }

    /// Send `req`; a 2xx or 304 (already in that state) answer is returned, anything else
    /// becomes the typed error podman's JSON (`{"cause", "message", "response"}`) describes.
    pub(crate) async fn exchange(
        &self,
        op: Op,
        target: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(op, target, e))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(podman_error(op, target, status, &body))
    }

    /// Run `fut` within `deadline`, or fail with [`RuntimeError::Timeout`].
    pub(crate) async fn within<T>(
        &self,
        op: Op,
        target: &str,
        deadline: Duration,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::Timeout {
                op,
                target: target.into(),
                after_ms: mose_protocol::units::millis(deadline),
            }),
        }
    }

    /// Send `req` within the ordinary deadline and decode the JSON answer.
    async fn json<T: DeserializeOwned>(
        &self,
        op: Op,
        target: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        self.within(op, target, self.timeout, async {
            let resp = self.exchange(op, target, req).await?;
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.transport_error(op, target, e))?;
            decode(op, target, &body)
        })
        .await
    }

    /// Send `req` within the ordinary deadline, ignoring the answer's body.
    async fn call(&self, op: Op, target: &str, req: reqwest::RequestBuilder) -> Result<StatusCode> {
        self.within(op, target, self.timeout, async {
            Ok(self.exchange(op, target, req).await?.status())
        })
        .await
    }

    /// `true` on 204, `false` on 404: libpod's `.../exists` endpoints.
    async fn exists_at(&self, op: Op, target: &str, path: &str) -> Result<bool> {
        match self.call(op, target, self.http.get(self.url(path))).await {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The podman engine version (`4.3.1`, `5.2.0`, ...).
    #[tracing::instrument(level = "debug", skip(self), fields(socket = %self.socket.display()))]
    pub async fn version(&self) -> Result<String> {
        let v: VersionResponse = self
            .json(Op::Version, "", self.http.get(self.url("/version")))
            .await?;
        Ok(v.version)
    }

    /// Host facts podman knows: OCI runtime, cgroup version, kernel.
    #[tracing::instrument(level = "debug", skip(self), fields(socket = %self.socket.display()))]
    pub async fn info(&self) -> Result<HostInfo> {
        self.json(Op::Info, "", self.http.get(self.url("/info")))
            .await
    }

    /// Create a container (not started); returns its ID.
    #[tracing::instrument(level = "debug", skip_all, fields(container = %spec.name, image = %spec.image))]
    pub async fn create(&self, spec: &CreateSpec) -> Result<String> {
        check_name(Op::Create, &spec.name)?;
        if spec.image.is_empty() {
            return Err(RuntimeError::Invalid {
                op: Op::Create,
                why: "empty image reference".into(),
            });
        }
        let req = self
            .http
            .post(self.url("/containers/create"))
            .json(&SpecGenerator::from(spec));
        let r: CreateResponse = self.json(Op::Create, &spec.name, req).await?;
        for w in r.warnings.unwrap_or_default() {
            tracing::warn!(container = %spec.name, warning = %w, "podman create warning");
        }
        Ok(r.id)
    }

    /// Start a container; starting a running one is not an error (idempotent).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn start(&self, name: &str) -> Result<()> {
        check_name(Op::Start, name)?;
        self.call(
            Op::Start,
            name,
            self.http
                .post(self.url(&format!("/containers/{name}/start"))),
        )
        .await?;
        Ok(())
    }

    /// Stop a container, giving it `grace` before SIGKILL; stopping a stopped one is not an error.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        check_name(Op::Stop, name)?;
        let req = self
            .http
            .post(self.url(&format!("/containers/{name}/stop")))
            .query(&[("timeout", grace.as_secs().to_string())]);
        // Podman waits out the grace period before answering.
        self.within(Op::Stop, name, self.timeout + grace, async {
            self.exchange(Op::Stop, name, req).await
        })
        .await?;
        Ok(())
    }

    /// Remove a container, killing it if it runs. Returns `false` if there was none (idempotent).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn remove(&self, name: &str) -> Result<bool> {
        check_name(Op::Remove, name)?;
        let req = self
            .http
            .delete(self.url(&format!("/containers/{name}")))
            .query(&[("force", "true"), ("timeout", "0")]);
        match self.call(Op::Remove, name, req).await {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /containers/{name}/json`.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn inspect(&self, name: &str) -> Result<ContainerInfo> {
        check_name(Op::Inspect, name)?;
        self.json(
            Op::Inspect,
            name,
            self.http.get(self.url(&format!("/containers/{name}/json"))),
        )
        .await
    }

    /// Whether a container with this name or ID exists.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn exists(&self, name: &str) -> Result<bool> {
        check_name(Op::Exists, name)?;
        self.exists_at(Op::Exists, name, &format!("/containers/{name}/exists"))
            .await
    }

    /// The running containers (name, init pid, state).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn list_running(&self) -> Result<Vec<ContainerSummary>> {
        self.json(
            Op::List,
            "containers",
            self.http.get(self.url("/containers/json")),
        )
        .await
    }

    /// Every volume on this host.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn volumes(&self) -> Result<Vec<VolumeSummary>> {
        self.json(
            Op::VolumeList,
            "volumes",
            self.http.get(self.url("/volumes/json")),
        )
        .await
    }

    /// Removes the volume `name` (with any container using it). Returns `false` if there was
    /// none (idempotent).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn remove_volume(&self, name: &str) -> Result<bool> {
        check_name(Op::VolumeRemove, name)?;
        let req = self
            .http
            .delete(self.url(&format!("/volumes/{name}")))
            .query(&[("force", "true")]);
        match self.call(Op::VolumeRemove, name, req).await {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One stats sample of a running container.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn stats(&self, name: &str) -> Result<ContainerStats> {
        check_name(Op::Stats, name)?;
        let req = self
            .http
            .get(self.url("/containers/stats"))
            .query(&[("containers", name), ("stream", "false")]);
        let env: StatsEnvelope = self.json(Op::Stats, name, req).await?;
        env.stats
            .and_then(|s| s.into_iter().next())
            .ok_or_else(|| RuntimeError::NotFound {
                op: Op::Stats,
                target: name.into(),
                message: "podman returned no stats for it".into(),
            })
    }

    /// Whether an image with this reference exists locally.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn image_exists(&self, reference: &str) -> Result<bool> {
        check_reference(Op::ImageExists, reference)?;
        self.exists_at(
            Op::ImageExists,
            reference,
            &format!("/images/{reference}/exists"),
        )
        .await
    }

    /// `podman save` of image `reference` as a docker-archive tar, streamed into `sink`;
    /// returns its size. What was written when it fails is a partial archive the caller
    /// discards. The export must finish within `deadline`.
    #[tracing::instrument(level = "debug", skip(self, sink))]
    pub async fn image_export<W>(
        &self,
        reference: &str,
        sink: &mut W,
        deadline: Duration,
    ) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let op = Op::ImageExport;
        check_reference(op, reference)?;
        let req = self
            .http
            .get(self.url(&format!("/images/{reference}/get")))
            .query(&[("format", "docker-archive")]);
        self.within(op, reference, deadline, async {
            let mut resp = self.exchange(op, reference, req).await?;
            let mut bytes = 0u64;
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => return Err(incomplete(op, reference, bytes, e.to_string())),
                };
                sink.write_all(&chunk)
                    .await
                    .map_err(archive_io(op, reference, bytes))?;
                bytes += chunk.len() as u64;
            }
            sink.flush()
                .await
                .map_err(archive_io(op, reference, bytes))?;
            Ok(bytes)
        })
        .await
    }

    /// `podman load` of an image archive (docker-archive or oci-archive tar), streamed from
    /// `archive`; returns the names podman reports. The load must finish within `deadline`.
    #[tracing::instrument(level = "debug", skip(self, archive))]
    pub async fn image_load(
        &self,
        archive: impl AsyncRead + Send + 'static,
        deadline: Duration,
    ) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Loaded {
            #[serde(rename = "Names", default)]
            names: Vec<String>,
        }
        let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(archive, UPLOAD_CHUNK));
        let req = self
            .http
            .post(self.url("/images/load"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(body);
        let target = "(image archive)";
        self.within(Op::ImageLoad, target, deadline, async {
            let resp = self.exchange(Op::ImageLoad, target, req).await?;
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.transport_error(Op::ImageLoad, target, e))?;
            let l: Loaded = decode(Op::ImageLoad, target, &body)?;
            Ok(l.names)
        })
        .await
    }
}

/// Podman's error document, or the raw body when it is not one.
pub(crate) fn podman_error(op: Op, target: &str, status: StatusCode, body: &[u8]) -> RuntimeError {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct ErrorDoc {
        cause: String,
        message: String,
    }
    let doc: ErrorDoc = serde_json::from_slice(body).unwrap_or_else(|_| ErrorDoc {
        cause: String::new(),
        message: snippet(body),
    });
    if status == StatusCode::NOT_FOUND {
        RuntimeError::NotFound {
            op,
            target: target.into(),
            message: doc.message,
        }
    } else {
        RuntimeError::Podman {
            op,
            target: target.into(),
            status: status.as_u16(),
            message: doc.message,
            cause: doc.cause,
        }
    }
}

pub(crate) fn decode<T: DeserializeOwned>(op: Op, target: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| RuntimeError::Protocol {
        op,
        target: target.into(),
        why: format!("{e} in `{}`", snippet(body)),
    })
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_string();
    if body.len() > 300 {
        format!("{s}...")
    } else {
        s
    }
}

/// Container names and IDs go into URL paths: allow podman's name alphabet only, so nothing
/// can alter the path or query.
pub(crate) fn check_name(op: Op, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            op,
            why: format!("`{name}` is not a valid podman name or ID"),
        })
    }
}

/// Image references may hold `/`, `:` and `@` (libpod routes `/images/{name:.*}`), but no
/// characters that would end the path or start a query.
fn check_reference(op: Op, reference: &str) -> Result<()> {
    let ok = !reference.is_empty()
        && !reference.contains("..")
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            op,
            why: format!("`{reference}` is not a valid image reference"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_errors_become_typed() {
        let body = br#"{"cause":"no such container","message":"no container with name or ID \"x\" found: no such container","response":404}"#;
        let e = podman_error(Op::Checkpoint, "x", StatusCode::NOT_FOUND, body);
        assert!(e.is_not_found());
        assert!(
            e.to_string()
                .starts_with("checkpoint x: not found (no container with name"),
            "{e}"
        );

        let body = br#"{"cause":"unexpected EOF","message":"unpacking of checkpoint archive /var/tmp/restore1 failed: unexpected EOF","response":500}"#;
        match podman_error(Op::Restore, "svc", StatusCode::INTERNAL_SERVER_ERROR, body) {
            RuntimeError::Podman {
                status: 500,
                cause,
                message,
                ..
            } => {
                assert_eq!(cause, "unexpected EOF");
                assert!(message.contains("unpacking"));
            }
            e => panic!("{e:?}"),
        }
        // Not JSON (a proxy, or not podman at all): the text is kept.
        let e = podman_error(
            Op::Start,
            "x",
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert!(
            e.to_string().contains("HTTP 502: <html>bad gateway</html>"),
            "{e}"
        );
    }

    #[test]
    fn names_and_references_are_checked() {
        for ok in ["svc", "a1.b-c_d", "199f4cdd5f94"] {
            assert!(check_name(Op::Start, ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a?b", "x y", "../x", "é"] {
            assert!(
                matches!(
                    check_name(Op::Start, bad),
                    Err(RuntimeError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        assert!(check_reference(Op::ImageExists, "localhost/mose/counter:latest").is_ok());
        assert!(check_reference(Op::ImageExists, "sha256:abc").is_ok());
        for bad in ["", "a?b=c", "a/../b", "x#y"] {
            assert!(check_reference(Op::ImageExists, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decode_errors_show_the_body() {
        let e = decode::<VersionResponse>(Op::Version, "", b"not json").unwrap_err();
        assert!(matches!(e, RuntimeError::Protocol { .. }));
        assert!(e.to_string().contains("`not json`"), "{e}");
    }

    #[tokio::test]
    async fn a_dead_socket_is_unreachable_not_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = Podman::new(dir.path().join("nothing.sock")).unwrap();
        let e = p.version().await.unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::Unreachable {
                    op: Op::Version,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("nothing.sock"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_service_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // Accepts connections and never answers, like a hung podman.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let p = Podman::new(&path)
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let e = p.inspect("svc").await.unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::Timeout {
                    op: Op::Inspect,
                    after_ms: 200,
                    ..
                }
            ),
            "{e:?}"
        );
        hold.abort();
    }
}
