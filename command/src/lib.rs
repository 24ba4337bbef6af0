//! `mose-command`: running an external program (ip, tc, nsenter, ovs-*, podman, criu, cargo,
//! ssh …) with a deadline, its output captured, and one error type that names the command line
//! and says what went wrong.
//!
//! ```no_run
//! # async fn f() -> Result<(), mose_command::CommandError> {
//! use std::time::Duration;
//! use mose_command::Cmd;
//! let links = Cmd::new("ip").args(["-o", "link", "show"]).stdout().await?;
//! let out = Cmd::new("criu").arg("--version").deadline(Duration::from_secs(5)).output().await?;
//! # Ok(()) }
//! ```
//!
//! * Every run has a deadline ([`DEFAULT_DEADLINE`] unless set): when it passes, the child is
//!   killed (SIGKILL) and reaped, and the run fails with [`CommandError::TimedOut`]. Dropping the
//!   future kills the child too.
//! * stdout and stderr are captured (read while the program runs, so a chatty program cannot
//!   block on a full pipe); stdin is `/dev/null` unless [`Cmd::input`] gives bytes to feed.
//!   [`Cmd::run_inherited`] leaves all three on our terminal instead (builds, setup scripts).
//! * A non-zero exit is [`CommandError::Failed`] carrying the program's stderr, except through
//!   [`Cmd::output_any_status`] (for tools whose exit status is information, not failure).
//! * [`Cmd::output_blocking`] and [`Cmd::stdout_blocking`] do the same from synchronous code
//!   (`Drop`, tests), also inside an async runtime.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The deadline of a run unless [`Cmd::deadline`] says otherwise: generous for the host tools
/// (ip, tc, ovs-vsctl answer in milliseconds), too short for builds and image loads.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// How long a killed child gets to be reaped before we stop waiting for it.
const REAP: Duration = Duration::from_secs(5);

/// A local I/O operation (a file, a socket, a namespace switch) that failed, with what was being
/// done: the crates that drive host tools share it, so their errors read alike.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IoError {
    /// What was being done, e.g. "read /proc/net/dev".
    pub what: String,
    /// The operating system's answer.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The failure `source` of doing `what`.
    pub fn new(what: impl Into<String>, source: std::io::Error) -> Self {
        IoError {
            what: what.into(),
            source,
        }
    }
}

/// Why a command did not give us its output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// [`Cmd::from_argv`] got no program.
    #[error("empty command line")]
    Empty,
    /// The program could not be started (not installed, not executable, no permission).
    #[error("cannot run `{}`: {source}", line(.program, .args))]
    Spawn {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully; `stderr` is its own explanation (trimmed).
    #[error("`{}` failed ({status}): {}", line(.program, .args), or_none(.stderr))]
    Failed {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The program did not finish within its deadline and was killed.
    #[error("`{}` did not finish within {} ms and was killed", line(.program, .args), .after.as_millis())]
    TimedOut {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// The deadline it exceeded.
        after: Duration,
    },
    /// Talking to the running program failed (feeding its stdin, reading its output, waiting).
    #[error("`{}`: cannot {what}: {source}", line(.program, .args))]
    Io {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// What could not be done ("write stdin", "wait", ...).
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    /// The program's stderr when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            CommandError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }

    /// The exit status when the program ran and failed.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            CommandError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CommandError::TimedOut { .. })
    }

    /// The program (first word of the command line); empty for [`CommandError::Empty`].
    pub fn program(&self) -> &str {
        match self {
            CommandError::Empty => "",
            CommandError::Spawn { program, .. }
            | CommandError::Failed { program, .. }
            | CommandError::TimedOut { program, .. }
            | CommandError::Io { program, .. } => program,
        }
    }
}

/// A result whose error defaults to [`CommandError`].
pub type Result<T, E = CommandError> = std::result::Result<T, E>;

/// `program arg arg…` for messages.
fn line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

fn or_none(stderr: &str) -> &str {
    if stderr.is_empty() {
        "no output on stderr"
    } else {
        stderr
    }
}

/// A command to run: program, arguments, environment, optional stdin bytes and a deadline.
///
/// Built like [`std::process::Command`]; anything it does not wrap (`pre_exec`, `uid`, …) is
/// reachable through [`Cmd::std_mut`], and an already configured `std` or `tokio` command
/// converts with `Cmd::from`.
#[derive(Debug)]
pub struct Cmd {
    inner: std::process::Command,
    input: Option<Vec<u8>>,
    deadline: Option<Duration>,
}

impl From<std::process::Command> for Cmd {
    fn from(inner: std::process::Command) -> Self {
        Self {
            inner,
            input: None,
            deadline: Some(DEFAULT_DEADLINE),
        }
    }
}

impl From<tokio::process::Command> for Cmd {
    fn from(c: tokio::process::Command) -> Self {
        Self::from(c.into_std())
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (program, args) = self.names();
        f.write_str(&line(&program, &args))
    }
}

impl Cmd {
    /// `program` with no arguments, the [`DEFAULT_DEADLINE`], stdin from `/dev/null`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self::from(std::process::Command::new(program))
    }

    /// A command from a whole command line (first element = program).
    pub fn from_argv<S: AsRef<OsStr>>(argv: &[S]) -> Result<Self> {
        let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
        Ok(Self::new(program).args(args))
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.inner.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    /// Sets environment variables for the program.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.inner.envs(vars);
        self
    }

    /// Removes an environment variable from the program's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.inner.env_remove(key);
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Feeds `data` to the program's stdin, then closes it (the program sees EOF).
    pub fn input(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.input = Some(data.into());
        self
    }

    /// Kill the program and fail when it runs longer than `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// No deadline: for builds whose duration nobody can bound (their output goes to the
    /// terminal, [`Cmd::run_inherited`]).
    pub fn no_deadline(mut self) -> Self {
        self.deadline = None;
        self
    }

    /// The underlying command, for what `Cmd` does not wrap. Its stdio settings are replaced
    /// when the command runs.
    pub fn std_mut(&mut self) -> &mut std::process::Command {
        &mut self.inner
    }

    /// The program and its arguments, as text.
    fn names(&self) -> (String, Vec<String>) {
        let program = self.inner.get_program().to_string_lossy().into_owned();
        let args = self
            .inner
            .get_args()
            .map(OsStr::to_string_lossy)
            .map(|a| a.into_owned())
            .collect();
        (program, args)
    }

    /// Runs the program to completion; a non-zero exit is [`CommandError::Failed`].
    pub async fn output(self) -> Result<Output> {
        let (program, args) = self.names();
        let out = self.exec(true).await?;
        check(program, args, out)
    }

    /// As [`Cmd::output`], returning stdout as text (lossy UTF-8).
    pub async fn stdout(self) -> Result<String> {
        let out = self.output().await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the program to completion and returns whatever exit status it had: for programs
    /// whose status is an answer (e.g. `dpkg-query -S` exits 1 when a path has no package).
    /// Spawn failures, I/O errors and the deadline are still errors.
    pub async fn output_any_status(self) -> Result<Output> {
        self.exec(true).await
    }

    /// Runs the program on our terminal (builds, setup scripts): stdout and stderr, and stdin
    /// unless [`Cmd::input`] was given, are ours. Within the deadline if one is set; a non-zero
    /// exit is [`CommandError::Failed`] pointing at the output above.
    pub async fn run_inherited(self) -> Result<()> {
        let (program, args) = self.names();
        let out = self.exec(false).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CommandError::Failed {
                program,
                args,
                status: out.status,
                stderr: "see its output above".into(),
            })
        }
    }

    /// [`Cmd::output`] from synchronous code. Runs on a helper thread with its own small
    /// runtime, so it works in `Drop` and inside an async runtime alike (blocking that thread).
    pub fn output_blocking(self) -> Result<Output> {
        blocking(self.output())
    }

    /// [`Cmd::stdout`] from synchronous code (see [`Cmd::output_blocking`]).
    pub fn stdout_blocking(self) -> Result<String> {
        blocking(self.stdout())
    }

    async fn exec(self, capture: bool) -> Result<Output> {
        let (program, args) = self.names();
        let Cmd {
            inner,
            input,
            deadline,
        } = self;
        let mut c = tokio::process::Command::from(inner);
        c.kill_on_drop(true).stdin(match (&input, capture) {
            (Some(_), _) => Stdio::piped(),
            (None, true) => Stdio::null(),
            (None, false) => Stdio::inherit(),
        });
        if capture {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            c.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
        tracing::debug!(cmd = %line(&program, &args), "run");
        let mut child = match c.spawn() {
            Ok(child) => child,
            Err(source) => {
                return Err(CommandError::Spawn {
                    program,
                    args,
                    source,
                })
            }
        };
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let work = async {
            let feed = async {
                match (stdin, input) {
                    (Some(mut w), Some(data)) => w.write_all(&data).await,
                    _ => Ok(()),
                }
                // Dropping stdin here closes it: the program sees EOF.
            };
            tokio::join!(feed, read_all(stdout), read_all(stderr), child.wait())
        };
        let finished = match deadline {
            Some(d) => tokio::time::timeout(d, work).await.ok(),
            None => Some(work.await),
        };
        let io = |what, source| CommandError::Io {
            program: program.clone(),
            args: args.clone(),
            what,
            source,
        };
        let Some((fed, out, err, status)) = finished else {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP, child.wait()).await;
            return Err(CommandError::TimedOut {
                program,
                args,
                after: deadline.unwrap_or_default(),
            });
        };
        let status = status.map_err(|e| io("wait for it", e))?;
        let stdout = out.map_err(|e| io("read its stdout", e))?;
        let stderr = err.map_err(|e| io("read its stderr", e))?;
        // A program that failed may well stop reading its input: its exit status says more
        // than our broken pipe. One that succeeded without taking all of it is suspicious.
        if status.success() {
            fed.map_err(|e| io("write its stdin", e))?;
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

fn check(program: String, args: Vec<String>, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(CommandError::Failed {
            program,
            args,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

async fn read_all(r: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Drives `fut` to completion on a new thread with a current-thread runtime.
fn blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| CommandError::Io {
                program: String::new(),
                args: Vec::new(),
                what: "start a runtime to run it",
                source,
            })?;
        rt.block_on(fut)
    });
    match worker.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `program args…` with the [`DEFAULT_DEADLINE`]; returns stdout.
pub async fn run<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new(program).args(args).stdout().await
}

/// A command line from string-likes (for code that assembles argv vectors).
pub fn argv<I, S>(parts: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parts.into_iter().map(Into::into).collect()
}

/// `OsString` arguments from string-likes.
pub fn os_args<I, S>(parts: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    parts.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn true_succeeds_with_empty_output() {
        let out = Cmd::new("true").output().await.unwrap();
        assert!(out.status.success());
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    }

    #[tokio::test]
    async fn stdout_is_captured() {
        let out = run("sh", ["-c", "echo hello; echo oops >&2"])
            .await
            .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[tokio::test]
    async fn false_is_failed_with_status_and_stderr() {
        let e = Cmd::new("false").output().await.unwrap_err();
        assert!(matches!(e, CommandError::Failed { .. }), "{e:?}");
        assert_eq!(e.status().and_then(|s| s.code()), Some(1));
        assert_eq!(
            e.to_string(),
            "`false` failed (exit status: 1): no output on stderr"
        );

        let e = Cmd::new("sh")
            .args(["-c", "echo bad thing >&2; exit 3"])
            .stdout()
            .await
            .unwrap_err();
        assert_eq!(e.stderr(), Some("bad thing"));
        assert!(
            e.to_string().starts_with(
                "`sh -c echo bad thing >&2; exit 3` failed (exit status: 3): bad thing"
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn any_status_returns_the_output_of_a_failure() {
        let out = Cmd::new("sh")
            .args(["-c", "echo partial; exit 1"])
            .output_any_status()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(out.stdout, b"partial\n");
    }

    #[tokio::test]
    async fn the_deadline_kills_the_child() {
        let t0 = Instant::now();
        let e = Cmd::new("sleep")
            .arg("5")
            .deadline(Duration::from_millis(100))
            .output()
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(
            e.to_string(),
            "`sleep 5` did not finish within 100 ms and was killed"
        );
    }

    #[tokio::test]
    async fn a_timed_out_child_is_gone() {
        // The child writes its pid, then sleeps; after the deadline it must not exist.
        let dir = std::env::temp_dir().join(format!("mose-command-{}", std::process::id()));
        let pidfile = dir.with_extension("pid");
        let e = Cmd::new("sh")
            .args([
                "-c",
                &format!("echo $$ > {}; exec sleep 5", pidfile.display()),
            ])
            .deadline(Duration::from_millis(300))
            .output()
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let _ = std::fs::remove_file(&pidfile);
        // Killed and reaped: no /proc entry (not even a zombie).
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let e = Cmd::new("mose-no-such-program")
            .arg("x")
            .output()
            .await
            .unwrap_err();
        match &e {
            CommandError::Spawn {
                program, source, ..
            } => {
                assert_eq!(program, "mose-no-such-program");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(e
            .to_string()
            .starts_with("cannot run `mose-no-such-program x`: "));
    }

    #[tokio::test]
    async fn input_is_fed_to_stdin() {
        let big = "line\n".repeat(100_000); // larger than a pipe buffer
        let out = Cmd::new("wc").arg("-l").input(big).stdout().await.unwrap();
        assert_eq!(out.trim(), "100000");
    }

    #[tokio::test]
    async fn env_and_current_dir_apply() {
        let out = Cmd::new("sh")
            .args(["-c", "echo $MOSE_X; pwd"])
            .env("MOSE_X", "42")
            .current_dir("/")
            .stdout()
            .await
            .unwrap();
        assert_eq!(out, "42\n/\n");
    }

    #[test]
    fn empty_argv_is_refused() {
        assert!(matches!(
            Cmd::from_argv::<&str>(&[]),
            Err(CommandError::Empty)
        ));
        let c = Cmd::from_argv(&argv(["ip", "link", "show"])).unwrap();
        assert_eq!(c.to_string(), "ip link show");
    }

    #[test]
    fn blocking_variants_work_outside_a_runtime() {
        assert_eq!(
            Cmd::new("echo").arg("hi").stdout_blocking().unwrap(),
            "hi\n"
        );
        assert!(Cmd::new("false").output_blocking().is_err());
        let e = Cmd::new("sleep")
            .arg("5")
            .deadline(Duration::from_millis(100))
            .output_blocking()
            .unwrap_err();
        assert!(e.is_timeout());
    }

    #[tokio::test]
    async fn blocking_variants_work_inside_a_runtime() {
        assert_eq!(
            Cmd::new("echo").arg("in").stdout_blocking().unwrap(),
            "in\n"
        );
    }

    #[tokio::test]
    async fn converted_commands_keep_their_settings() {
        let mut t = tokio::process::Command::new("sh");
        t.args(["-c", "echo $MOSE_Y"]).env("MOSE_Y", "tokio");
        assert_eq!(Cmd::from(t).stdout().await.unwrap(), "tokio\n");
        let mut s = std::process::Command::new("sh");
        s.args(["-c", "echo $MOSE_Y"]).env("MOSE_Y", "std");
        assert_eq!(Cmd::from(s).stdout().await.unwrap(), "std\n");
    }
}
