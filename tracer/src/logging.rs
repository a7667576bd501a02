//! Where warnings and notes go. On a plain terminal: stderr, as env_logger writes them. While
//! the dashboard is up: its status line, never raw onto the screen it draws. With
//! `--log-file`: that file too, each line with its time.

use std::{
    fs::File,
    io::Write,
    sync::{Mutex, OnceLock},
};

/// What takes a line for the dashboard's status line while it is up.
pub type ToDashboard = Box<dyn Fn(String) + Send>;

struct Logger {
    stderr: env_logger::Logger,
    file: Mutex<Option<File>>,
    dashboard: Mutex<Option<ToDashboard>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Creates the `--log-file` (mode 0600, never through a link; see `output::files`).
pub fn create_file(path: &std::path::Path) -> crate::Result<File> {
    crate::output::files::create_private(path).map_err(|source| crate::Error::Output {
        path: path.to_owned(),
        source,
    })
}

/// Installs the logger: `level` as env_logger reads it (`RUST_LOG` wins), and the log file if
/// one was asked for. Called once, by the binary.
pub fn init(level: &str, file: Option<File>) {
    let stderr = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .build();
    let max = stderr.filter();
    let logger = LOGGER.get_or_init(|| Logger {
        stderr,
        file: Mutex::new(file),
        dashboard: Mutex::new(None),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
    }
}

/// While the dashboard is up, warnings go to its status line through `to`; `None` when it
/// has gone (they go to stderr again).
pub fn dashboard(to: Option<ToDashboard>) {
    if let Some(l) = LOGGER.get() {
        if let Ok(mut d) = l.dashboard.lock() {
            *d = to;
        }
    }
}

/// A note shown elsewhere (stderr or the dashboard) that belongs in the log file too.
pub fn note(line: &str) {
    if let Some(l) = LOGGER.get() {
        l.to_file("note", line);
    }
}

impl Logger {
    fn to_file(&self, level: &str, line: &str) {
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if let Some(f) = file.as_mut() {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let _ = writeln!(
                f,
                "{now} {level} {}",
                crate::output::terminal::escape(line, false)
            );
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.stderr.matches(record) {
            return;
        }
        let text = record.args().to_string();
        let level = record.level().as_str().to_ascii_lowercase();
        self.to_file(&level, &text);
        if let Ok(d) = self.dashboard.lock() {
            if let Some(to) = d.as_ref() {
                let mut line = format!("{level}: {text}");
                crate::output::terminal::clean(&mut line);
                to(line);
                return;
            }
        }
        self.stderr.log(record);
    }

    fn flush(&self) {
        self.stderr.flush();
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let _ = f.flush();
            }
        }
    }
}
