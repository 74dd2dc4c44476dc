//! A real headless Chromium: the DOM it builds from a page, and a
//! screenshot at a given window size. Started with the flags that keep it
//! off the network (this machine has none) and a fresh profile each time.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::tools::chromium;

fn run(args: &[String]) -> Output {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("chromium wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("chromium output")
}

/// The serialized DOM of `url` after loading.
pub fn dump_dom(url: &str) -> String {
    let out = run(&["--dump-dom".into(), url.into()]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<html"),
        "chromium --dump-dom {url} gave no page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// A PNG of `url` in a `width`×`height` window, written to `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(png);
    let out = run(&[
        format!("--window-size={width},{height}"),
        format!("--screenshot={}", png.display()),
        url.into(),
    ]);
    assert!(
        png.is_file(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Width, height and the number of distinct colours of a PNG: a blank page
/// has one or two.
pub fn png_summary(png: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = bytes.chunks(px).collect();
    (info.width, info.height, colours.len())
}
