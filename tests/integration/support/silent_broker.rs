//! A broker that stops answering: a tansu process of the test's own, reached through a proxy
//! in the test that can go silent (tansu advertises the proxy, so every connection of a client
//! passes through it).

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{free_port, wait_listening};

/// How many free ports tansu is tried on (another test may take one before tansu binds it).
const START_ATTEMPTS: usize = 3;

/// tansu behind a [`SilencingProxy`]; tansu is killed when this is dropped.
pub struct SilentBroker {
    /// The address clients use: the proxy's.
    pub brokers: String,
    proxy: SilencingProxy,
    tansu: Child,
    /// Holds tansu's log (stderr) until dropped.
    _log: tempfile::TempDir,
}

impl SilentBroker {
    pub async fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let upstream = format!("127.0.0.1:{}", free_port());
            let proxy = SilencingProxy::start(&upstream).await;
            let log = tempfile::tempdir().unwrap();
            let log_path = log.path().join("tansu.log");
            let mut tansu = std::process::Command::new("tansu")
                .args(["broker", "--listener-url", &format!("tcp://{upstream}")])
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://{}", proxy.addr),
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("tansu, installed by scripts/test.sh");
            // Still running a moment after it answers: the listener is tansu's, not another
            // process's that took the port first (tansu then exits).
            let settle = Duration::from_millis(300);
            let limit = Duration::from_secs(30);
            match wait_listening(&mut tansu, "tansu", &upstream, &log_path, settle, limit) {
                Ok(()) => {
                    return Self {
                        brokers: proxy.addr.clone(),
                        proxy,
                        tansu,
                        _log: log,
                    }
                }
                Err(exited) => failures.push(exited),
            }
        }
        panic!("tansu did not start: {failures:#?}");
    }

    /// From now on nothing passes either way; connections stay open. Fails the test if the
    /// proxy could not reach tansu before.
    pub fn silence(&self) {
        self.proxy.silent.store(true, Ordering::SeqCst);
        let failure = self.proxy.failure.lock().unwrap().clone();
        assert!(failure.is_none(), "the proxy failed: {failure:?}");
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

/// A TCP proxy to `upstream` that passes bytes both ways until silenced; after that it reads
/// and drops everything, and keeps every connection open (new ones are accepted and never
/// answered).
struct SilencingProxy {
    addr: String,
    silent: Arc<AtomicBool>,
    /// What went wrong in the proxy's tasks, for the test to fail on (a panic there would only
    /// end the task).
    failure: Arc<Mutex<Option<String>>>,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl SilencingProxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let upstream = upstream.to_owned();
        let flag = silent.clone();
        let failed = failure.clone();
        tokio::spawn(async move {
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(error) => {
                        *failed.lock().unwrap() = Some(format!("accept: {error}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if flag.load(Ordering::SeqCst) {
                    tokio::spawn(hold_open(client));
                    continue;
                }
                let server = match tokio::net::TcpStream::connect(&upstream).await {
                    Ok(server) => server,
                    Err(error) => {
                        *failed.lock().unwrap() =
                            Some(format!("reaching tansu at {upstream}: {error}"));
                        continue;
                    }
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let pipes: [(Reader, Writer); 2] = [
                    (Box::new(client_read), Box::new(server_write)),
                    (Box::new(server_read), Box::new(client_write)),
                ];
                for (from, to) in pipes {
                    tokio::spawn(pass(from, to, flag.clone()));
                }
            }
        });
        Self {
            addr,
            silent,
            failure,
        }
    }
}

/// Copies `from` to `to` until either ends (then ends `to` too), or, once `silent`, reads and
/// drops what comes and never ends.
async fn pass(mut from: Reader, mut to: Writer, silent: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    if silent.load(Ordering::SeqCst) {
        // Keeps `to` open: a silent broker closes nothing.
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}

/// A connection accepted once silent: held open, never answered.
async fn hold_open(connection: tokio::net::TcpStream) {
    let _connection = connection;
    std::future::pending::<()>().await
}
