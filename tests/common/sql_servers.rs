//! The SQL servers of the state-store tests: the machine's own PostgreSQL (5432) and
//! MariaDB (3306) for most, and private instances (their own data folder and port) for the
//! tests that stop a server or need it behind TLS, so nothing else is disturbed.

use super::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SHARED_POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
pub const SHARED_MARIADB: &str = "root@tcp(127.0.0.1:3306)/";

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user (the server refuses
/// root), trust authentication on 127.0.0.1.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    tls: bool,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with(None)
    }

    /// With `tls` (certificate, key) the server accepts TLS connections only.
    pub fn start_with(tls: Option<(&Path, &Path)>) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
            "chown the data folder",
        );
        let data = dir.path().join("data");
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("initdb"))
                .args(["-U", "postgres", "--auth=trust", "-D"])
                .arg(&data),
            "initdb",
        );
        if let Some((cert, key)) = tls {
            std::fs::copy(cert, data.join("server.crt")).unwrap();
            std::fs::copy(key, data.join("server.key")).unwrap();
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key")),
                "chown the certificate",
            );
            run(
                Command::new("chmod")
                    .arg("600")
                    .arg(data.join("server.key")),
                "chmod the key",
            );
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            tls: tls.is_some(),
        };
        pg.spawn();
        pg
    }

    pub fn spawn(&self) {
        let data = self.dir.path().join("data");
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1{}",
                    self.port,
                    self.dir.path().display(),
                    if self.tls { " -c ssl=on" } else { "" }
                ))
                .args(["-w", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
        wait_for_port(self.port, "the private PostgreSQL");
    }

    /// A fast shutdown: sessions are cut, as when a database pod is restarted.
    pub fn stop(&self) {
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null()),
            "pg_ctl stop",
        );
    }

    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A MariaDB server of the test's own (root without a password on 127.0.0.1), optionally
/// with a TLS certificate.
pub struct PrivateMariadb {
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    child: std::sync::Mutex<Option<Child>>,
}

impl PrivateMariadb {
    pub fn start(tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> PrivateMariadb {
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                ])
                .arg(format!("--datadir={}", dir.path().join("data").display())),
            "mariadb-install-db",
        );
        let m = PrivateMariadb {
            port: free_port(),
            dir,
            tls,
            child: Default::default(),
        };
        m.spawn();
        m
    }

    pub fn spawn(&self) {
        let mut cmd = Command::new("mariadbd");
        cmd.args([
            "--no-defaults",
            "--user=root",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
        ])
        .arg(format!("--port={}", self.port))
        .arg(format!(
            "--datadir={}",
            self.dir.path().join("data").display()
        ))
        .arg(format!(
            "--socket={}",
            self.dir.path().join("sock").display()
        ))
        .arg(format!(
            "--pid-file={}",
            self.dir.path().join("pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some((cert, key)) = &self.tls {
            cmd.arg(format!("--ssl-cert={}", cert.display()))
                .arg(format!("--ssl-key={}", key.display()));
        }
        *self.child.lock().unwrap() =
            Some(cmd.spawn().expect("mariadbd (Debian's mariadb-server)"));
        wait_for_port(self.port, "the private MariaDB");
    }

    /// SIGKILL, as a crashed server: InnoDB recovers on the next start.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs SQL as root through the server's socket.
    pub fn sql(&self, statement: &str) {
        run(
            Command::new("mariadb")
                .arg(format!(
                    "--socket={}",
                    self.dir.path().join("sock").display()
                ))
                .args(["-uroot", "-e", statement]),
            statement,
        );
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        self.stop();
    }
}
