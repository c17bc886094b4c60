//! A PostgreSQL server of a test's own (Debian's binaries, a new cluster in a temporary
//! directory, on a free loopback port), for a test that restarts Postgres: restarting the shared
//! server would break every test running beside it. Stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::services::free_port;

pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb` (trust authentication) and start. As root, the server's commands run as the
    /// `postgres` user, which owns the cluster's directory (Postgres refuses to run as root).
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("tenantstream-pg-")
            .tempdir()
            .expect("cluster directory");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let server = Self {
            bin,
            dir,
            port: free_port(),
        };
        server.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D"],
            &[server.data()],
        );
        server.pg_ctl("start");
        server
    }

    /// The URL of database `name` as role `user`.
    pub fn url(&self, user: &str, name: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server the way a crash or a power cut would (`-m immediate`: no shutdown
    /// checkpoint; the next start replays the write-ahead log), then starts it again.
    pub fn crash_and_restart(&self, down_for: Duration) {
        self.pg_ctl_stop("immediate");
        std::thread::sleep(down_for);
        self.pg_ctl("start");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &["-w", "-t", "60", "-o", &options, "-l"],
            &[log, "-D".into(), self.data(), action.into()],
        );
        self.wait_until_accepting();
    }

    fn pg_ctl_stop(&self, mode: &str) {
        self.run("pg_ctl", &["-w", "stop", "-m", mode, "-D"], &[self.data()]);
    }

    fn wait_until_accepting(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "private Postgres on {} not accepting; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn run(&self, program: &str, args: &[&str], paths: &[PathBuf]) {
        let output = self
            .command(program)
            .args(args)
            .args(paths)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} {paths:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// One of the server's programs, run as `postgres` when the test runs as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Best effort: a test that failed still stops its server.
        let _ = self
            .command("pg_ctl")
            .args(["-w", "stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
    }
}

/// The newest installed server's binaries (Debian: /usr/lib/postgresql/<major>/bin).
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(root)
        .expect("Debian's postgresql package (/usr/lib/postgresql)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.last().expect("a PostgreSQL major version installed");
    root.join(major.to_string()).join("bin")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
