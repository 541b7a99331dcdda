//! A throwaway PostgreSQL server for tests: `initdb` and `pg_ctl` from Debian's `postgresql`
//! package, in a temporary directory, on a free port of 127.0.0.1, with password (SCRAM)
//! authentication, stopped and removed on drop. When the tests run as root the server runs
//! as the `postgres` system user, since PostgreSQL refuses to run as root.
//!
//! A missing package or a server that does not start is a panic with the reason: tests that
//! need PostgreSQL fail loudly, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Name of the application database every instance creates.
pub const DATABASE: &str = "process";
/// Application user (owner of the database, not a superuser).
pub const USER: &str = "orchestrator";

/// A running PostgreSQL server.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Password of the application user.
    pub password: String,
    /// Password of the `postgres` superuser.
    pub superuser_password: String,
    /// Its `max_connections`.
    pub max_connections: u32,
}

/// The `max_connections` of a test instance: room for the tests' own clients beside the
/// servers. [`TestPostgres::start_with_max_connections`] sets another.
pub const TEST_MAX_CONNECTIONS: u32 = 200;

fn find_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is not installed (Debian package `postgresql`): run `make test`, which installs it")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

fn random_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates a CA and a server certificate for 127.0.0.1 (and `localhost` only as the CN of
/// nothing: the name is left out so that host-name checks against `localhost` fail).
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=orc-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=orc-test-server",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

impl TestPostgres {
    /// Initializes and starts a server; the application user owns database `process`.
    pub fn start() -> Self {
        Self::start_with(false, TEST_MAX_CONNECTIONS)
    }

    /// Like `start`, with `max_connections` (PostgreSQL's own default is 100).
    pub fn start_with_max_connections(max_connections: u32) -> Self {
        Self::start_with(false, max_connections)
    }

    /// Like `start`, with TLS on: `ca_pem()` returns the CA that signed its certificate, which
    /// names 127.0.0.1 only.
    pub fn start_with_tls() -> Self {
        Self::start_with(true, TEST_MAX_CONNECTIONS)
    }

    /// The PEM of the CA of a TLS instance.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("a TLS instance")
    }

    fn start_with(tls: bool, max_connections: u32) -> Self {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("orc-pg-")
            .tempdir()
            .expect("temporary directory");
        let superuser_password = random_token();
        let password = random_token();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &superuser_password).unwrap();
        if tls {
            make_certificates(dir.path());
        }
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the data directory failed");
        }
        let data = dir.path().join("data");
        let mut this = Self {
            dir,
            bin,
            port: 0,
            password,
            superuser_password,
            max_connections,
        };
        this.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // Ports can be taken between the probe and the start: try a few.
        for attempt in 0..5 {
            this.port = free_port();
            let options = this.options();
            let log = this.dir.path().join("server.log");
            let output = this.output(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ],
            );
            if output.status.success() {
                break;
            }
            assert!(
                attempt < 4,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        this.psql_as_superuser(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", this.password),
        );
        this.psql_as_superuser("postgres", &format!("CREATE DATABASE {DATABASE} OWNER {USER}"));
        this
    }

    /// Server options; TLS is on when the instance has a certificate (`start_with_tls`).
    fn options(&self) -> String {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections={}",
            self.port,
            self.dir.path().display(),
            self.max_connections
        );
        if self.dir.path().join("server.crt").exists() {
            options.push_str(" -c ssl=on -c ssl_cert_file=../server.crt -c ssl_key_file=../server.key");
        }
        options
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.output(program, args);
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs SQL as the superuser in `database`.
    pub fn psql_as_superuser(&self, database: &str, sql: &str) {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .env("PGPASSWORD", &self.superuser_password)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A libpq connection string for the application user.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={} dbname={DATABASE}",
            self.port, self.password
        )
    }

    /// A libpq connection string for the `postgres` superuser (whose connections use the
    /// slots PostgreSQL reserves for superusers).
    pub fn superuser_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={DATABASE}",
            self.port, self.superuser_password
        )
    }

    /// The environment an orchestration server or the operator reads its settings from.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_HOST", "127.0.0.1".to_string()),
            ("DATABASE_PORT", self.port.to_string()),
            ("DATABASE_NAME", DATABASE.to_string()),
            ("DATABASE_USER", USER.to_string()),
            ("DATABASE_PASSWORD", self.password.clone()),
            ("DATABASE_SSLMODE", "disable".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Stops the server (fast shutdown); `start_again` brings it back on the same port.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let options = self.options();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Adds a login role `name` with `password`, stored with `encryption` (`md5` or
    /// `scram-sha-256`), whose connections from 127.0.0.1 authenticate by the `pg_hba.conf`
    /// method `method` (`md5`, `password`, `scram-sha-256`), and reloads the configuration.
    pub fn add_login(&self, name: &str, password: &str, method: &str, encryption: &str) {
        let hba = self.dir().join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("host all {name} 127.0.0.1/32 {method}\n{rules}")).unwrap();
        self.psql_as_superuser(
            DATABASE,
            &format!(
                "SET password_encryption = '{encryption}'; CREATE ROLE {name} LOGIN PASSWORD '{password}'; GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}; SELECT pg_reload_conf()"
            ),
        );
    }

    /// Folder of the instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until a TCP connection to the server succeeds.
    pub fn wait_accepting(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {} did not accept connections",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.output(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"],
        );
    }
}
