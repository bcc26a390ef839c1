//! Headless Chromium (Debian's `chromium`) as a test's child, confined to a fresh temporary
//! directory (profile, HOME, XDG config and cache, crash database) and its own process
//! group. On drop every process of that browser is killed and the directory removed, also
//! when the test panics.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The launcher Debian installs (a script that `exec`s the browser, so its pid is the
/// browser's and the browser leads the process group).
const BINARY: &str = "chromium";

/// Flags for a browser that only talks to the page server and the relay, on loopback.
const FLAGS: &[&str] = &[
    "--headless",
    // Root cannot use Chromium's sandbox; the page is the test's own.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // Nothing to reach out to: no first-run, sync, component, extension or field-trial fetches.
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    // Chromium 156 still looks up accounts.google.com, clients2.google.com and
    // update.googleapis.com with all of the above; resolving no name at all stops that (the
    // page, the relay and the TURN URL are IP literals; a rule matches literals too, hence
    // the exclusion).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    // ... nor mDNS: WebRTC's mDNS responder (host candidate names) is of no use here.
    "--disable-features=MediaRouter,OptimizationHints,Translate,AutofillServerCommunication,\
     WebRtcHideLocalIpsWithMdns",
    // Not needed by Chromium 156: a page without a camera/microphone permission gets no
    // interface enumeration and WebRTC binds its TURN client sockets to the any address,
    // which reaches 127.0.0.1 over loopback. A Chromium that enumerates interfaces would
    // skip loopback without this flag.
    "--allow-loopback-in-peer-connection",
];

pub struct Chromium {
    child: Child,
    /// Everything the browser writes goes below this directory.
    dir: PathBuf,
}

impl Chromium {
    /// Starts headless Chromium on `url` with `extra` flags; fails the test, naming the fix,
    /// if it is missing.
    pub fn open(url: &str, extra: &[String]) -> Chromium {
        let dir = std::env::temp_dir().join(format!(
            "relay-browser-test-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir(&dir).expect("create the browser's temporary directory");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let spawned = Command::new(BINARY)
            .args(FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            // Not the user's home: the crash database (~/.config/chromium/Crash Reports),
            // dconf's cache and NSS's ~/.pki land here too.
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Chromium { child, dir },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "cannot start `{BINARY}`: {e}. This test needs Debian's Chromium: \
                     tests/run installs it (`apt-get install chromium`)"
                );
            }
        }
    }

    /// The exit status if the browser has already exited (it should not).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the browser wrote to stderr so far, for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The running (not zombie) processes of this browser: its process group (zygote,
    /// renderer, GPU and network processes), and the crashpad handlers, which leave the group
    /// for sessions of their own but name this browser's directory in their command line.
    fn processes(&self, group: libc::pid_t) -> Vec<libc::pid_t> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let dir = self.dir.to_string_lossy().into_owned();
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                let pgrp = fields.nth(1)?.parse::<libc::pid_t>().ok()?;
                if state == "Z" || state == "X" {
                    return None;
                }
                let ours = pgrp == group
                    || std::fs::read(entry.path().join("cmdline"))
                        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&dir));
                ours.then_some(pid)
            })
            .collect()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the process group this test created for its own child (the
        // child is not reaped yet, so the group id cannot have been reused).
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        // Then each process left (bounded), before removing the directory they write to.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes(group);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) on a process of this browser, found running just now.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
