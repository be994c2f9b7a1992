//! Metrics and health endpoints (issue 12) on real processes, checked with
//! the real Prometheus tools: `promtool check metrics` on the exposition, a
//! real `prometheus` server scraping the daemon, readiness following a
//! "broker" that goes away and comes back, and scrapes that still answer
//! while slow clients hold connections. Nothing but 127.0.0.1 is contacted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::health::status_json;
use crate::util::*;

/// Generous: prometheus starts slowly on a loaded machine.
const SLOW: Duration = Duration::from_secs(90);

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` over plain HTTP/1.0: (status code, body), or `None` if
/// nothing answered.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of `metric` (a whole sample name with labels) in `text`.
fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A `rookery run` pool whose workers need a "broker": the file `broker-up`
/// in the test's directory. Without it, every start fails at once (exit 3).
fn pool(port: u16, extra: &str) -> Daemon {
    let d = Daemon::rookery("");
    let broker = d.dir.path().join("broker-up");
    d.rewrite_config(&format!(
        "[workers]\ncount = 2\nmin_uptime = \"300ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"300ms\"\n\
         crash_limit = 1000\n\
         command = [\"sh\", \"-c\", \"[ -e '{}' ] || exit 3; exec sleep 300\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
        broker.display()
    ));
    std::fs::write(&broker, "").unwrap();
    d
}

/// Waits until `n` workers run (status says so); their pids.
fn running(d: &Daemon, n: usize) -> Vec<i32> {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = status_json(d);
        crate::health::status_workers(&last)
            .iter()
            .filter(|w| w["state"] == "running")
            .count()
            == n
    });
    assert!(
        ok,
        "{n} workers never ran: {last}
{}",
        d.log()
    );
    crate::health::status_workers(&last)
        .iter()
        .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
        .collect()
}

/// A `prometheus` server in its own directory, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second.
    fn start(target: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: rookery\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) is installed");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The first value of an instant query, if the query has a result.
    fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = get(self.port, &format!("/api/v1/query?query={enc}"))?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` accepts `text`, with no complaint at all.
fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 13's gauges for KEDA/HPA: with `mode = "backlog"`, the backlog
/// the workers report and the size it asks for, accepted by promtool.
#[test]
fn backlog_mode_exports_the_backlog_and_the_desired_size() {
    let port = free_port();
    let d = Daemon::rookery("");
    d.rewrite_config(&format!(
        "[workers]\nmode = \"backlog\"\nmin = 1\nmax = 4\njobs_per_worker = 10\nscale_down_cooldown = \"1h\"\n\
         command = [\"sh\", \"-c\", \"echo 'backlog 25' >&3; exec sleep 300\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    d.start();
    let mut text = String::new();
    assert!(
        wait_until(DEADLINE, || {
            text = get(port, "/metrics").map(|(_, t)| t).unwrap_or_default();
            sample(&text, "rookery_backlog_jobs") == Some(25.0)
        }),
        "{text}\n{}",
        d.log()
    );
    assert_eq!(
        sample(&text, "rookery_backlog_desired_workers"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "rookery_worker_backlog_jobs{slot=\"1\"}"),
        Some(25.0),
        "{text}"
    );
    promtool_check(&text);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn promtool_accepts_the_exposition_and_the_endpoints_answer() {
    let port = free_port();
    let d = pool(port, "");
    d.start();
    running(&d, 2);
    let (code, text) = get(port, "/metrics").expect("metrics answer");
    assert_eq!(code, 200, "{text}");
    for metric in [
        "rookery_workers_target",
        "rookery_workers{state=\"backing_off\"}",
        "rookery_worker_starts_total{cause=\"start\"}",
        "rookery_worker_starts_total{cause=\"crash\"}",
        "rookery_jobs_total",
        "rookery_crash_loop",
        "rookery_reloads_total{result=\"ok\"}",
        "rookery_parent_uptime_seconds",
        "rookery_parent_resident_memory_bytes",
        "rookery_worker_resident_memory_bytes{slot=\"1\"}",
        "rookery_worker_heartbeat_age_seconds{slot=\"2\"}",
    ] {
        assert!(sample(&text, metric).is_some(), "{metric} missing:\n{text}");
    }
    assert_eq!(sample(&text, "rookery_workers_target"), Some(2.0));
    assert!(
        !text.contains("rookery_backlog_"),
        "static mode: no backlog gauges\n{text}"
    );
    assert!(sample(&text, "rookery_parent_resident_memory_bytes").unwrap() > 0.0);
    assert!(text.contains(&format!(
        "rookery_build_info{{version=\"{}\",build_id=\"\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    promtool_check(&text);

    assert_eq!(get(port, "/livez"), Some((200, "ok\n".into())));
    assert!(wait_until(DEADLINE, || get(port, "/readyz").is_some_and(|(c, _)| c == 200)));
    assert_eq!(get(port, "/nope").map(|(c, _)| c), Some(404));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"DELETE /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_sees_a_killed_worker_restarted() {
    let port = free_port();
    let d = pool(port, "");
    d.start();
    let workers = running(&d, 2);
    let prom = Prometheus::start(&format!("127.0.0.1:{port}"));
    assert!(
        wait_until(SLOW, || prom.query("up") == Some(1.0)),
        "prometheus never saw the target up\n{}",
        prom.log()
    );
    let crashes = "rookery_worker_starts_total{cause=\"crash\"}";
    assert_eq!(prom.query(crashes), Some(0.0), "{}", prom.log());
    kill(workers[0], 9);
    assert!(
        wait_until(SLOW, || prom.query(crashes).is_some_and(|n| n >= 1.0)),
        "the restart counter did not rise: {:?}\n{}",
        prom.query(crashes),
        prom.log()
    );
    assert_eq!(prom.query("up"), Some(1.0));
    assert_eq!(prom.query("rookery_workers_target"), Some(2.0));
    drop(prom);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn readiness_and_status_follow_the_broker_going_away_and_coming_back() {
    let port = free_port();
    let d = pool(port, "");
    d.start();
    let workers = running(&d, 2);
    assert!(wait_until(DEADLINE, || get(port, "/readyz").is_some_and(|(c, _)| c == 200)));
    assert!(wait_until(DEADLINE, || d.run(&["status"]).status.code() == Some(0)));

    // The broker goes away; the workers die and cannot start again.
    std::fs::remove_file(d.dir.path().join("broker-up")).unwrap();
    for w in &workers {
        kill(*w, 9);
    }
    let mut last = None;
    assert!(
        wait_until(DEADLINE, || {
            last = get(port, "/readyz");
            last.as_ref()
                .is_some_and(|(c, b)| *c == 503 && b.contains("backing off"))
        }),
        "{last:?}\n{}",
        d.log()
    );
    let body = last.unwrap().1;
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    // Polled: under load a restarted command may outlive min_uptime (and
    // so count as ready) before it finds the broker gone and exits.
    let mut text = String::new();
    assert!(
        wait_until(DEADLINE, || {
            text = get(port, "/metrics").map(|(_, t)| t).unwrap_or_default();
            sample(&text, "rookery_workers_ready") == Some(0.0)
                && sample(&text, "rookery_workers{state=\"backing_off\"}").is_some_and(|n| n >= 1.0)
        }),
        "{text}"
    );
    // status: running but degraded, exit 1, the reason on one line.
    let mut out = d.run(&["status"]);
    assert!(wait_until(DEADLINE, || {
        out = d.run(&["status"]);
        out.status.code() == Some(1)
    }));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.lines()
            .any(|l| l.starts_with("degraded: ") && l.contains("backing off")),
        "{said}"
    );
    let v = status_json(&d);
    assert_eq!(v["ready"], false, "{v}");
    assert!(v["reason"].as_str().is_some(), "{v}");
    assert_eq!(get(port, "/livez").map(|(c, _)| c), Some(200), "the loop runs");

    // The broker is back: the next restarts stay up, and all is well again.
    std::fs::write(d.dir.path().join("broker-up"), "").unwrap();
    assert!(
        wait_until(DEADLINE, || get(port, "/readyz").is_some_and(|(c, _)| c == 200)),
        "{:?}\n{}",
        get(port, "/readyz"),
        d.log()
    );
    assert!(wait_until(DEADLINE, || d.run(&["status"]).status.code() == Some(0)));
    assert_eq!(status_json(&d)["ready"], true);
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_scrape_still_answers_while_slow_clients_hold_connections() {
    let port = free_port();
    let d = pool(port, "min_ready = 1\n");
    d.start();
    running(&d, 2);
    // Five clients that send half a request and then nothing.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metr").unwrap();
        slow.push(s);
    }
    let (code, text) = get(port, "/metrics").expect("an answer");
    assert_eq!(code, 200);
    assert_eq!(sample(&text, "rookery_workers_target"), Some(2.0));
    // Past the connection cap, the oldest silent ones make room.
    for _ in 0..40 {
        slow.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    assert_eq!(get(port, "/readyz").map(|(c, _)| c), Some(200));
    // And the silent ones are closed at their deadline, not held for ever.
    let mut first = slow.remove(5);
    first.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(first.read(&mut buf), Ok(0) | Err(_)),
        "closed by the daemon"
    );
    assert!(d.run(&["stop"]).status.success());
}

#[test]
fn a_bad_listen_address_is_a_located_config_error_and_a_change_needs_a_restart() {
    let d = Daemon::demo("[workers]\ncount = 1\n\n[metrics]\nlisten = \"localhost:9187\"\n");
    let out = d.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.toml:") && err.contains("metrics.listen") && err.contains("IP:PORT"),
        "{err}"
    );

    let port = free_port();
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let out = d.run(&["check-config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"")),
        "{text}"
    );
    let parent = d.start();
    d.wait_workers(parent, 1);
    assert_eq!(get(port, "/livez").map(|(c, _)| c), Some(200));

    let other = free_port();
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\n\n[metrics]\nlisten = \"127.0.0.1:{other}\"\n"
    ));
    let out = d.run(&["reload"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("metrics.listen") && said.contains("restart"),
        "{said}"
    );
    assert_eq!(
        get(port, "/livez").map(|(c, _)| c),
        Some(200),
        "still on the old address"
    );
    assert!(d.run(&["stop"]).status.success());

    // A taken port fails the start, saying so.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    d.rewrite_config(&format!(
        "[workers]\ncount = 1\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let out = d.run(&["start"]);
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("cannot listen for metrics on 127.0.0.1:{port}")),
        "{said}"
    );
    drop(taken);
}

#[test]
fn metrics_can_be_served_on_a_unix_socket() {
    let d = Daemon::demo("[workers]\ncount = 1\n\n[metrics]\nlisten = \"unix:m.sock\"\n");
    let parent = d.start();
    d.wait_workers(parent, 1);
    let path = d.dir.path().join("m.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("the metrics socket");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"), "{text}");
    assert_eq!(sample(&text, "rookery_workers_target"), Some(1.0), "{text}");
    assert!(d.run(&["stop"]).status.success());
    assert!(wait_until(DEADLINE, || !path.exists()), "the socket is removed");
}
