//! What a copy reports as it goes, and the three ways of showing it: bars on a terminal,
//! plain lines otherwise, one JSON object per line for scripts.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One thing that happened. Serialised with `"event"` naming the variant.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A copy of `source` to `destination` begins.
    Started {
        source: String,
        destination: String,
    },
    BlobStarted {
        digest: String,
        size: u64,
    },
    /// `sent`: bytes the destination holds so far (a resumed upload starts above 0).
    BlobProgress {
        digest: String,
        sent: u64,
        size: u64,
    },
    /// `resumed_from`: the offset a partly sent upload continued from.
    BlobDone {
        digest: String,
        size: u64,
        resumed_from: Option<u64>,
    },
    /// The destination already had the blob (`exists`), or this copy already sent it
    /// (`copied`).
    BlobSkipped {
        digest: String,
        size: u64,
        reason: &'static str,
    },
    ManifestDone {
        digest: String,
        media_type: String,
        tag: Option<String>,
        skipped: bool,
    },
    /// Something the user should know (e.g. what a platform filter did).
    Note {
        message: String,
    },
    Finished {
        source: String,
        destination: String,
        digest: String,
        manifests: u64,
        blobs_copied: u64,
        blobs_skipped: u64,
        bytes_sent: u64,
        seconds: f64,
    },
    Error {
        message: String,
    },
}

/// Receives every event; implementations decide what to show.
pub trait Observer: Send + Sync {
    fn event(&self, e: &Event);
}

/// Shows nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}

/// Events that are not progress, from anywhere, are worth a line; progress is throttled.
fn throttle(last: &Mutex<HashMap<String, Instant>>, digest: &str, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match last.get(digest) {
        Some(t) if now.duration_since(*t) < every => false,
        _ => {
            last.insert(digest.to_string(), now);
            true
        }
    }
}

/// One JSON object per event per line on stdout; progress at most every 250 ms per blob.
#[derive(Default)]
pub struct JsonLines {
    last: Mutex<HashMap<String, Instant>>,
}

impl Observer for JsonLines {
    fn event(&self, e: &Event) {
        if let Event::BlobProgress { digest, sent, size } = e
            && sent < size
            && !throttle(&self.last, digest, Duration::from_millis(250))
        {
            return;
        }
        if let Ok(line) = serde_json::to_string(e) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Plain lines on stderr (for logs and pipes): progress at most every 5 s per blob.
#[derive(Default)]
pub struct PlainLines {
    last: Mutex<HashMap<String, Instant>>,
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Observer for PlainLines {
    fn event(&self, e: &Event) {
        let line = match e {
            Event::Started { source, destination } => format!("copying {source} -> {destination}"),
            Event::BlobStarted { .. } => return,
            Event::BlobProgress { digest, sent, size } => {
                if !throttle(&self.last, digest, Duration::from_secs(5)) {
                    return;
                }
                format!(
                    "blob {}: {} of {} ({}%)",
                    short(digest),
                    human_bytes(*sent),
                    human_bytes(*size),
                    if *size == 0 { 100 } else { sent * 100 / size }
                )
            }
            Event::BlobDone {
                digest,
                size,
                resumed_from,
            } => match resumed_from {
                Some(o) => format!(
                    "blob {}: done, {} (resumed at {})",
                    short(digest),
                    human_bytes(*size),
                    human_bytes(*o)
                ),
                None => format!("blob {}: done, {}", short(digest), human_bytes(*size)),
            },
            Event::BlobSkipped { digest, reason, .. } => {
                format!("blob {}: skipped ({})", short(digest), skip_reason(reason))
            }
            Event::ManifestDone {
                digest, tag, skipped, ..
            } => format!(
                "manifest {}{}{}",
                digest,
                tag.as_ref().map(|t| format!(" tagged {t}")).unwrap_or_default(),
                if *skipped { " (already there)" } else { "" }
            ),
            Event::Note { message } => message.clone(),
            // The command prints errors and its summary itself.
            Event::Finished { .. } | Event::Error { .. } => return,
        };
        eprintln!("{line}");
    }
}

fn skip_reason(reason: &str) -> &str {
    match reason {
        "exists" => "the destination has it",
        _ => "already copied",
    }
}

/// indicatif bars on stderr: one per blob in flight and one overall (shown from the first
/// blob sent on).
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    overall_shown: std::sync::atomic::AtomicBool,
    blobs: Mutex<HashMap<String, (ProgressBar, u64)>>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Bars {
    pub fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        // Hidden until added to `multi` (which then draws it).
        let overall = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("total");
        Bars {
            multi,
            overall,
            overall_shown: std::sync::atomic::AtomicBool::new(false),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, s: String) {
        let _ = self.multi.println(s);
    }
}

impl Observer for Bars {
    fn event(&self, e: &Event) {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::BlobStarted { digest, size } => {
                if !self
                    .overall_shown
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    self.multi.add(self.overall.clone());
                }
                self.overall.inc_length(*size);
                let bar = self.multi.insert_before(&self.overall, ProgressBar::new(*size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(digest).to_string());
                blobs.insert(digest.clone(), (bar, 0));
            }
            Event::BlobProgress { digest, sent, .. } => {
                if let Some((bar, seen)) = blobs.get_mut(digest) {
                    bar.set_position(*sent);
                    self.overall.inc(sent.saturating_sub(*seen));
                    *seen = *sent;
                }
            }
            Event::BlobDone { digest, size, .. } => {
                if let Some((bar, seen)) = blobs.remove(digest) {
                    self.overall.inc(size.saturating_sub(seen));
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                self.line(format!("blob {}: done, {}", short(digest), human_bytes(*size)));
            }
            Event::BlobSkipped { digest, reason, .. } => {
                self.line(format!(
                    "blob {}: skipped ({})",
                    short(digest),
                    skip_reason(reason)
                ));
            }
            Event::ManifestDone {
                digest, tag, skipped, ..
            } => self.line(format!(
                "manifest {}{}{}",
                digest,
                tag.as_ref().map(|t| format!(" tagged {t}")).unwrap_or_default(),
                if *skipped { " (already there)" } else { "" }
            )),
            Event::Note { message } => self.line(message.clone()),
            // Cleared so the command's own message is not drawn over; it prints errors.
            Event::Error { .. } | Event::Finished { .. } => {
                for (_, (bar, _)) in blobs.drain() {
                    bar.finish_and_clear();
                }
                self.overall.finish_and_clear();
            }
            Event::Started { .. } => {}
        }
    }
}

/// The observer for the flags and where output goes.
pub fn observer(quiet: bool, json: bool) -> Box<dyn Observer> {
    if json {
        Box::new(JsonLines::default())
    } else if quiet {
        Box::new(Quiet)
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(Bars::new())
    } else {
        Box::new(PlainLines::default())
    }
}
