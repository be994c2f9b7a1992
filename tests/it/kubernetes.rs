//! The Kubernetes example (`examples/kubernetes/`, issue 12): its manifests
//! must say what the daemon really does, and rookery must be a sound PID 1.
//!
//! - The YAML files are parsed (with `serde_yaml_ng`) and checked against
//!   the config the image carries and the Dockerfile: probe paths are the
//!   endpoints the daemon serves, every port is the one `[metrics] listen`
//!   binds, the grace period outlasts `stop_timeout` and the preStop hook,
//!   the preStop hook runs `pause` with the container's binary and config
//!   (which know the command), the container runs the config file the image copies, and KEDA scales
//!   this Deployment on the tube the workers read. The shipped config must
//!   pass `check-config`.
//! - `rookery` runs as PID 1 of a new PID namespace (`unshare --pid --fork
//!   --mount-proc`), as in a container, with workers that leave orphans
//!   behind: it reaps them all (no zombie in the namespace), answers the
//!   manifests' probe paths, and on SIGTERM stops its workers gracefully
//!   and exits 0.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rookery_testkit::procfs::{self, Pid};
use serde_yaml_ng::Value;

use crate::util::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes")
}

fn read(name: &str) -> String {
    fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn yaml(name: &str) -> Value {
    serde_yaml_ng::from_str(&read(name)).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"))
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn int(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {v:?}"))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
        .iter()
        .map(|s| text(s, what).to_string())
        .collect()
}

/// The shipped config, as the daemon will read it.
fn config() -> toml::Table {
    read("worker.toml").parse().expect("worker.toml is TOML")
}

/// The port of `[metrics] listen`.
fn metrics_port(cfg: &toml::Table) -> u16 {
    let listen = cfg["metrics"]["listen"].as_str().expect("[metrics] listen");
    let (host, port) = listen.rsplit_once(':').expect("listen is HOST:PORT");
    assert_eq!(
        host, "0.0.0.0",
        "the kubelet probes the pod's IP: listen on every address"
    );
    port.parse().expect("a port number")
}

/// A container port given by number or by the name of one of `container`'s
/// ports, as Kubernetes resolves it.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = text(port, "port");
    let ports = container["ports"].as_sequence().expect("container ports");
    let p = ports
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    int(&p["containerPort"], "containerPort")
}

/// The JSON-array form of a Dockerfile instruction (`ENTRYPOINT [...]`).
fn docker_exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix(instruction)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("Dockerfile has no {instruction}"));
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{instruction} exec form: {e}"))
}

#[test]
fn kubernetes_manifests_match_what_the_daemon_serves() {
    let cfg = config();
    let port = u64::from(metrics_port(&cfg));
    let stop_timeout = humantime::parse_duration(
        cfg["workers"]["stop_timeout"]
            .as_str()
            .expect("workers.stop_timeout"),
    )
    .expect("a duration");
    assert_ne!(
        cfg["workers"].get("mode").and_then(|m| m.as_str()),
        Some("backlog"),
        "KEDA sizes the pods: the pool's own backlog mode must stay off"
    );
    // issue 10: JSON lines on the container's stdout.
    assert_eq!(
        cfg["daemon"]["logfile"].as_str(),
        Some("/dev/stdout"),
        "logs to stdout"
    );
    assert_eq!(cfg["daemon"]["log_format"].as_str(), Some("json"), "logs JSON");

    // The image: the config it copies, the command it runs.
    let dockerfile = read("Dockerfile");
    let copied = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY examples/kubernetes/worker.toml "))
        .expect("the Dockerfile copies worker.toml")
        .trim()
        .to_string();
    let mut image_cmd = docker_exec_form(&dockerfile, "ENTRYPOINT");
    image_cmd.extend(docker_exec_form(&dockerfile, "CMD"));
    let binary = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY --from=build /out/beanstalk_worker "))
        .expect("the Dockerfile copies the binary")
        .trim();

    // The Deployment.
    let deploy = yaml("deployment.yaml");
    assert_eq!(deploy["kind"].as_str(), Some("Deployment"));
    let pod = &deploy["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container: rookery is the supervisor");
    let c = &containers[0];
    let command = strings(&c["command"], "command");
    assert_eq!(command, image_cmd, "the container runs the image's command");
    assert_eq!(command[0], binary, "the binary the image installs");
    let at = command.iter().position(|a| a == "-c").expect("-c CONFIG");
    assert_eq!(command[at + 1], copied, "the config file the image copies");
    assert!(command.iter().any(|a| a == "--no-daemon"), "foreground: PID 1");
    assert_eq!(command.last().map(String::as_str), Some("start"));

    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(resolve_port(c, &get["port"]), port, "{probe} port");
    }
    assert!(
        c["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port)),
        "the metrics port is declared"
    );

    // issue 11: preStop pauses the pool, with the container's binary and
    // config; `pause` answers at once (5 s allowed for it).
    let pre_stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"], "preStop");
    assert_eq!(
        pre_stop,
        [binary, "-c", copied.as_str(), "pause"],
        "preStop runs `pause` with the binary and config of the container"
    );
    let pre_stop_secs = 5;
    // The shipped binary knows the command and reads the shipped config:
    // with no daemon running it says so (3), not a usage error (64).
    let out = run_with_timeout(
        std::process::Command::new(example("beanstalk_worker"))
            .arg("-c")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/worker.toml"))
            .arg("pause")
            .env("XDG_RUNTIME_DIR", std::env::temp_dir()),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "`pause` with the shipped config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grace = int(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        Duration::from_secs(grace) > stop_timeout + Duration::from_secs(pre_stop_secs),
        "terminationGracePeriodSeconds {grace} must outlast stop_timeout {stop_timeout:?} \
         plus the preStop hook's {pre_stop_secs}s"
    );
    assert!(
        c["resources"]["limits"]["memory"].as_str().is_some(),
        "a memory limit"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The metrics Service points at the same port.
    let svc = yaml("service.yaml");
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(resolve_port(c, &sp["targetPort"]), port, "Service targetPort");
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&labels[k], v, "the Service selects the pods");
    }

    // KEDA scales this Deployment on the workers' tube.
    let so = yaml("scaledobject.yaml");
    assert_eq!(so["apiVersion"].as_str(), Some("keda.sh/v1alpha1"));
    assert_eq!(so["kind"].as_str(), Some("ScaledObject"));
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"], deploy["metadata"]["name"],
        "scales the Deployment"
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("beanstalkd"));
    assert_eq!(
        trigger["metadata"]["tube"].as_str(),
        cfg["app"]["tube"].as_str(),
        "the tube the workers read"
    );
    let value: u64 = text(&trigger["metadata"]["value"], "value")
        .parse()
        .expect("value: jobs per pod");
    assert!(value > 0);

    // And the daemon accepts the shipped config as it is.
    let out = run_with_timeout(
        Command::new(example("beanstalk_worker"))
            .arg("-c")
            .arg(dir().join("worker.toml"))
            .arg("check-config")
            .env_remove("BEANSTALKD_SERVER"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "check-config of worker.toml failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `unshare` and the namespace's PID 1 (its child), killed if a test fails.
struct Namespace {
    unshare: Child,
    init: Option<i32>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // SIGKILL to a namespace's PID 1 kills every process in it.
        if let Some(p) = self.init {
            if alive(p) {
                kill(p, 9);
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Every process of the namespace whose PID 1 is `init` (host pids),
/// zombies included: all of them descend from it, as orphans are
/// re-parented to it.
fn namespace_processes(init: i32) -> Vec<i32> {
    let mut found = vec![init];
    let mut i = 0;
    while i < found.len() {
        found.extend(
            procfs::children(Pid::from_raw(found[i]))
                .into_iter()
                .map(Pid::as_raw),
        );
        i += 1;
    }
    found
}

/// A process's pid inside the namespace (the last `NSpid` field).
fn inner_pid(pid: i32) -> Option<i32> {
    status_field(pid, "NSpid")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn zombies(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|p| proc_state(*p) == Some('Z'))
        .collect()
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

fn lines(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn kubernetes_pid1_in_a_pid_namespace_reaps_everything_and_stops_on_sigterm() {
    let tmp = TempDir::new("pid1");
    let d = tmp.path();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (short, stopped) = (d.join("short"), d.join("stopped"));
    // Each worker leaves two orphans: one that exits at once (a zombie
    // until PID 1 reaps it; it ignores the stray's SIGTERM, inherited from
    // before the fork, and writes its pid first) and one that would run on (a stray the daemon stops). On
    // TERM the worker records a clean stop. (`$$$$` is `$$` in the config.)
    let script = format!(
        "(sleep 300 &); (trap '' TERM; sh -c 'echo $$$$ >> {short}' &); \
         trap 'echo $$$$ >> {stopped}; exit 0' TERM; while :; do sleep 0.2; done",
        short = short.display(),
        stopped = stopped.display()
    );
    let cfg = d.join("worker.toml");
    fs::write(
        &cfg,
        format!(
            "[daemon]\nname = \"rookery\"\npidfile = \"{}\"\nlogfile = \"-\"\nloglevel = \"debug\"\nlog_format = \"json\"\n\n\
             [workers]\ncount = 2\nmin_uptime = \"300ms\"\nstop_timeout = \"10s\"\n\
             command = [\"sh\", \"-c\", '''{script}''']\n\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            d.join("d.pid").display()
        ),
    )
    .unwrap();
    let log = d.join("stderr.log");
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(rookery_bin())
        .arg("-c")
        .arg(&cfg)
        .args(["--no-daemon", "start"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("run unshare");
    let mut ns = Namespace {
        unshare: child,
        init: None,
    };
    let log_text = || fs::read_to_string(&log).unwrap_or_default();

    let unshare_pid = ns.unshare.id() as i32;
    let mut init = None;
    assert!(
        wait_until(DEADLINE, || {
            init = procfs::children(Pid::from_raw(unshare_pid))
                .first()
                .map(|p| p.as_raw());
            init.is_some()
        }),
        "unshare forked no child; log:\n{}",
        log_text()
    );
    let init = init.unwrap();
    ns.init = Some(init);
    assert_eq!(inner_pid(init), Some(1), "the daemon is the namespace's PID 1");

    // The probe paths of the Deployment answer 200 once the pool is up.
    let deploy = yaml("deployment.yaml");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = text(&c[probe]["httpGet"]["path"], "path").to_string();
        assert!(
            wait_until(DEADLINE, || http_status(port, &path) == Some(200)),
            "{path} never answered 200; log:\n{}",
            log_text()
        );
    }

    // Both short-lived orphans ran, and are reaped: none is left in the
    // namespace, not even as a zombie; nor are the strays, nor any zombie.
    assert!(
        wait_until(DEADLINE, || lines(&short).len() >= 2),
        "the workers' orphans never ran; log:\n{}",
        log_text()
    );
    let orphans: BTreeSet<i32> = lines(&short).into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut last = Vec::new();
    let settled = wait_until(DEADLINE, || {
        last = namespace_processes(init);
        seen.extend(last.iter().copied());
        let reaped = !last
            .iter()
            .any(|p| inner_pid(*p).is_some_and(|i| orphans.contains(&i)));
        let strays = last.iter().any(|p| cmdline(*p) == "sleep 300");
        reaped && !strays && zombies(&last).is_empty()
    });
    assert!(
        settled,
        "PID 1 left orphans or zombies: {:?}\n{}\nlog:\n{}",
        last,
        last.iter()
            .map(|p| format!("{p} {:?} {}", proc_state(*p), cmdline(*p)))
            .collect::<Vec<_>>()
            .join("\n"),
        log_text()
    );
    // The pool still runs: PID 1, the guard and the two workers.
    assert!(
        namespace_processes(init).len() >= 4,
        "the pool is gone: {:?}\nlog:\n{}",
        namespace_processes(init),
        log_text()
    );

    // SIGTERM, as the kubelet sends it: a clean stop, exit 0.
    kill(init, 15);
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            status = ns.unshare.try_wait().expect("try_wait");
            status.is_some()
        }),
        "SIGTERM did not stop the daemon; log:\n{}",
        log_text()
    );
    let status = status.unwrap();
    assert!(
        status.success(),
        "PID 1 exited with {status:?}; log:\n{}",
        log_text()
    );
    assert_eq!(
        lines(&stopped).len(),
        2,
        "each worker got the stop signal from rookery (not the namespace's SIGKILL); log:\n{}",
        log_text()
    );
    let left: Vec<i32> = seen.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the namespace left: {left:?}");
    ns.init = None;
    // issue 10: what the container runtime collects is JSON, line by line.
    let text = log_text();
    let mut roles = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string());
        roles.insert(v["role"].as_str().unwrap_or_default().to_string());
    }
    assert!(roles.contains("parent"), "{text}");
}
