//! The `paxoskv-server` binary for tests that start real server processes.
//!
//! It belongs to another package, so Cargo neither builds it for these tests nor sets
//! `CARGO_BIN_EXE_paxoskv-server`; a dev-dependency on `paxoskv-server` only builds its library.
//! So the tests build it themselves, with the Cargo that runs them, into the same target
//! directory and profile as the test executable: next to `paxoskv-nemesis`, where the nemesis
//! looks by default.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of an up-to-date `paxoskv-server`, built on first use (once per test process).
pub fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_server)
}

fn build_server() -> PathBuf {
    // The test executable lives in `<target-dir>/<profile>/deps/`.
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "paxoskv-server",
        "--bin",
        "paxoskv-server",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo to build paxoskv-server");
    assert!(status.success(), "building paxoskv-server failed: {status}");
    let bin = profile_dir.join(format!("paxoskv-server{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// A figure from `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`), if the process lives.
#[allow(dead_code)]
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// File descriptors a process has open now (entries of `/proc/PID/fd`).
#[allow(dead_code)]
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Raises this process's soft open-file limit to the hard one; returns the soft limit.
#[allow(dead_code)]
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    soft
}
