//! The dashboard in a real browser: headless Chromium, driven through chromedriver (plain
//! WebDriver JSON over HTTP), loads the page of a per-process cluster, sees five replicas and
//! exactly one leader, and after a kill -9 of the leader process sees a different leader and
//! the old one down. A screenshot goes to `<target dir>/dashboard.png`.
//!
//! Without chromium and chromedriver the test prints `skipped: ...` and passes, unless
//! `PAXOSKV_REQUIRE_BROWSER=1` (CI), then it fails.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_addrs, server_bin, spawn_replica_with, Processes};

const REPLICAS: usize = 5;
/// Debian's paths; `PAXOSKV_CHROMIUM` / `PAXOSKV_CHROMEDRIVER` override them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest one WebDriver exchange may take (starting a browser is the slow one).
const WEBDRIVER_TIMEOUT_MS: u64 = 60_000;
/// Largest WebDriver answer read (a screenshot is a few hundred KiB of base64).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Bound on chromedriver coming up, the first leader and the failover each.
const WAIT_S: u64 = 30;
/// Most PUTs of the background load (it stops at the end of the test long before).
const MAX_LOAD_PUTS: u64 = 1_000_000;

/// chromedriver, killed when dropped.
struct Driver {
    process: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One HTTP/1.1 exchange with chromedriver: `(status, JSON body)`.
fn http_json(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let timeout = Duration::from_millis(WEBDRIVER_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).expect("connect to chromedriver");
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = None;
    for _ in 0..100 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            assert!(n <= MAX_ANSWER_BYTES, "answer of {n} bytes");
            raw.resize(n, 0);
            reader.read_exact(&mut raw).expect("answer body");
        }
        None => {
            reader
                .take(MAX_ANSWER_BYTES as u64)
                .read_to_end(&mut raw)
                .expect("answer body");
        }
    }
    let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    (status, value)
}

/// A WebDriver command that must succeed; returns its `value`.
fn command(driver: &Driver, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, answer) = http_json(driver.addr, method, path, body);
    assert_eq!(status, 200, "WebDriver {method} {path}: {answer}");
    answer["value"].clone()
}

/// `default`, unless environment variable `var` names another path.
fn tool_path(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Starts chromedriver on a free port and waits (bounded) until it is ready.
fn start_driver() -> Driver {
    let addr = free_addrs(1)[0];
    let process = Command::new(tool_path("PAXOSKV_CHROMEDRIVER", CHROMEDRIVER))
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { process, addr };
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    loop {
        if TcpStream::connect(addr).is_ok() {
            let (status, answer) = http_json(addr, "GET", "/status", None);
            if status == 200 && answer["value"]["ready"] == json!(true) {
                return driver;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver not ready in {WAIT_S} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the page shows, read from its data-* attributes.
#[derive(Debug, PartialEq)]
struct Shown {
    replicas: usize,
    leaders: Vec<u64>,
    down: Vec<u64>,
}

const READ_PAGE: &str = "
    const cards = [...document.querySelectorAll('[data-replica]')];
    const ids = sel => cards.filter(sel).map(c => Number(c.dataset.replica));
    return {
        replicas: cards.length,
        leaders: ids(c => c.dataset.role === 'leader' && c.dataset.down === 'false'),
        down: ids(c => c.dataset.down === 'true'),
        summary: document.getElementById('leader').dataset.leader,
    };";

fn read_page(driver: &Driver, session: &str) -> Shown {
    let v = command(
        driver,
        "POST",
        &format!("/session/{session}/execute/sync"),
        Some(&json!({ "script": READ_PAGE, "args": [] })),
    );
    let list = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    Shown {
        replicas: v["replicas"].as_u64().unwrap_or(0) as usize,
        leaders: list("leaders"),
        down: list("down"),
    }
}

/// Polls the page (bounded) until `check` holds; returns what it showed then.
fn wait_page(driver: &Driver, session: &str, what: &str, check: impl Fn(&Shown) -> bool) -> Shown {
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    let mut last = None;
    while Instant::now() < deadline {
        let shown = read_page(driver, session);
        if check(&shown) {
            return shown;
        }
        last = Some(shown);
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("page did not show {what} within {WAIT_S} s; last: {last:?}");
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else two levels above this test binary
/// (`<target>/debug/deps/dashboard-...`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn save_screenshot(driver: &Driver, session: &str) -> PathBuf {
    use base64::Engine;
    let v = command(
        driver,
        "GET",
        &format!("/session/{session}/screenshot"),
        None,
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 screenshot"))
        .expect("valid base64");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    let path = target_dir().join("dashboard.png");
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

/// PUTs in a loop until `stop`, so the page's charts have something to show; errors (during
/// the failover) are expected and ignored.
fn background_load(
    addrs: Vec<SocketAddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async move {
            let mut config = paxoskv_client::ClientConfig::with_servers(addrs);
            config.timeout = Duration::from_secs(2);
            let mut client = paxoskv_client::Client::connect(config).expect("valid config");
            let mut ok = 0;
            for i in 0..MAX_LOAD_PUTS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let put = client.put(&format!("k{}", i % 100), b"v".to_vec()).await;
                ok += u64::from(put.is_ok());
            }
            ok
        })
    })
}

/// True when the browser is here; otherwise says why and whether that is allowed.
fn browser_available() -> bool {
    let missing: Vec<String> = [
        tool_path("PAXOSKV_CHROMIUM", CHROMIUM),
        tool_path("PAXOSKV_CHROMEDRIVER", CHROMEDRIVER),
    ]
    .into_iter()
    .filter(|p| !std::path::Path::new(p).exists())
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    assert!(
        std::env::var("PAXOSKV_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "PAXOSKV_REQUIRE_BROWSER=1 but {why}"
    );
    println!("skipped: {why}");
    false
}

#[test]
fn the_dashboard_shows_the_leader_and_a_failover_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let all = free_addrs(2 * REPLICAS);
    let (addrs, metrics) = all.split_at(REPLICAS);
    let peers: Vec<String> = metrics.iter().map(|m| m.to_string()).collect();
    let data = tempfile::tempdir().expect("temporary data directory");
    let mut servers = Processes(Vec::new());
    for (id, m) in metrics.iter().enumerate() {
        let extra = [
            "--metrics-addr".to_string(),
            m.to_string(),
            "--dashboard-peers".to_string(),
            peers.join(","),
        ];
        servers.0.push(spawn_replica_with(
            server_bin(),
            id,
            addrs,
            data.path(),
            &extra,
        ));
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = background_load(addrs.to_vec(), stop.clone());
    let driver = start_driver();
    let capabilities = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": tool_path("PAXOSKV_CHROMIUM", CHROMIUM),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"],
        },
    }}});
    let session = command(&driver, "POST", "/session", Some(&capabilities));
    let session = session["sessionId"]
        .as_str()
        .expect("a session id")
        .to_string();
    let url = format!("http://{}/", metrics[0]);
    command(
        &driver,
        "POST",
        &format!("/session/{session}/url"),
        Some(&json!({ "url": url })),
    );

    let before = wait_page(&driver, &session, "five replicas, one leader", |s| {
        s.replicas == REPLICAS && s.leaders.len() == 1 && s.down.is_empty()
    });
    let old = before.leaders[0];
    println!("page shows leader {old} of {REPLICAS} replicas");

    let victim = &mut servers.0[old as usize];
    victim.kill().expect("kill -9 the leader");
    victim.wait().expect("reap the leader");
    let killed = Instant::now();
    let down = wait_page(&driver, &session, "the old leader down", |s| {
        s.down == [old]
    });
    println!("old leader {old} shown down after {:?}", killed.elapsed());
    assert_eq!(down.replicas, REPLICAS);
    let after = wait_page(&driver, &session, "a new leader", |s| {
        s.leaders.len() == 1 && s.leaders[0] != old && s.down == [old]
    });
    println!(
        "new leader {} shown {:?} after the kill",
        after.leaders[0],
        killed.elapsed()
    );
    // A few chart intervals (1 s each) past the failover, so the screenshot shows it.
    std::thread::sleep(Duration::from_millis(3000));
    let path = save_screenshot(&driver, &session);
    println!("screenshot: {}", path.display());
    let _ = http_json(driver.addr, "DELETE", &format!("/session/{session}"), None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let puts = load.join().expect("load thread");
    assert!(puts > 0, "the background load wrote nothing");
}
