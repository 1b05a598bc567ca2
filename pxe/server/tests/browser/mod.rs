//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages ended by a NUL byte, commands on fd 3, answers
//! and events on fd 4), inside a network namespace. The two fds are FIFOs a shell hands to
//! Chromium, so no WebSocket client and no unsafe code are needed. Enough of the protocol for a
//! test: open a page, evaluate JavaScript, wait for a condition on the live DOM, take a
//! screenshot.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plasmacloud_testkit::netns;
use plasmacloud_testkit::Process;
use serde_json::{json, Value};

/// A running browser with one page attached.
pub struct Browser {
    proc: Process,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// The browser's profile directory and FIFOs.
    pub dir: PathBuf,
}

/// The flags the tests run Chromium with: headless, no sandbox (root in a namespace), and
/// nothing that talks to the internet.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    // The management listener's certificate is of the cluster CA, which this empty profile
    // does not trust; an operator's browser imports ca.crt instead.
    "--ignore-certificate-errors",
    "--remote-debugging-pipe",
];

impl Browser {
    /// Starts Chromium in namespace `ns` with a fresh profile under `dir`, window
    /// `width`×`height`, and attaches to a new page at `url`.
    pub fn open(ns: &str, dir: &Path, url: &str, width: u32, height: u32) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).map_err(|e| e.to_string())?;
        let (fin, fout) = (dir.join("cdp-in"), dir.join("cdp-out"));
        for f in [&fin, &fout] {
            let _ = std::fs::remove_file(f);
            let ok = std::process::Command::new("mkfifo")
                .arg(f)
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err(format!("mkfifo {} failed", f.display()));
            }
        }
        let mut cmd = netns::command_in(ns, "sh");
        let mut line = String::from("exec chromium");
        for f in FLAGS {
            line.push(' ');
            line.push_str(f);
        }
        line.push_str(&format!(
            " --user-data-dir=\"$PROFILE\" --window-size={width},{height} about:blank 3<\"$CDP_IN\" 4>\"$CDP_OUT\""
        ));
        cmd.arg("-c")
            .arg(line)
            .env("PROFILE", &profile)
            .env("CDP_IN", &fin)
            .env("CDP_OUT", &fout)
            .env("HOME", dir);
        let proc = Process::spawn("chromium", cmd, &dir.join("chromium.log"))
            .map_err(|e| e.to_string())?;
        // Opening a FIFO blocks until its other end opens: do it off this thread, with a
        // deadline, in the order the shell opens them (fd 3, then fd 4).
        let (tx, rx) = mpsc::channel();
        let (a, b) = (fin.clone(), fout.clone());
        std::thread::spawn(move || {
            let to = std::fs::OpenOptions::new().write(true).open(&a);
            let from = std::fs::File::open(&b);
            let _ = tx.send((to, from));
        });
        let (to, from) = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("chromium did not open its pipes: {}", proc.output()))?;
        let to = to.map_err(|e| e.to_string())?;
        let from = from.map_err(|e| e.to_string())?;
        let (mtx, mrx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if mtx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            proc,
            to,
            from: mrx,
            next_id: 1,
            session: None,
            dir: dir.to_path_buf(),
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().unwrap_or_default().to_string();
        let att = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        b.session = att["sessionId"].as_str().map(str::to_string);
        b.call("Page.enable", json!({}))?;
        b.call("Runtime.enable", json!({}))?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        b.call("Page.navigate", json!({ "url": url }))?;
        Ok(b)
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .map_err(|e| format!("{method}: {e}: {}", self.proc.output()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .map_err(|_| format!("{method}: no answer in 30 s: {}", self.proc.output()))?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluates `expr` in the page; its value (promises awaited).
    pub fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expr` is truthy in the page, up to `deadline`; its last value otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        expr: &str,
        deadline: Duration,
    ) -> Result<Value, String> {
        let end = Instant::now() + deadline;
        let mut last = Value::Null;
        while Instant::now() < end {
            match self.eval(expr) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => last = v,
                Err(e) => last = json!(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "waiting {} s for the page to show {what}: last {last}",
            deadline.as_secs()
        ))
    }

    /// A PNG of the whole page (its full height at the window's width), written to `path`.
    pub fn screenshot(&mut self, path: &Path, width: u32) -> Result<(), String> {
        let m = self.call("Page.getLayoutMetrics", json!({}))?;
        let height = m["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(1000.0)
            .ceil() as u32;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height.max(200), "deviceScaleFactor": 1, "mobile": false }),
        )?;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data)?;
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }

    /// Chromium's output so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Standard base64 (RFC 4648 §4), padding optional.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("not base64: byte {c}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Where a test's artifacts go: `<target dir>/test-artifacts/` (`CARGO_TARGET_DIR`, else the
/// directory above the test executable's profile directory).
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        })
        .unwrap_or_else(std::env::temp_dir);
    target.join("test-artifacts")
}

#[test]
fn base64_decodes_rfc4648_vectors() {
    for (enc, dec) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes());
    }
}
