//! Running external commands with error messages that say what was run and why it failed.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

/// A command line ready to run; keeps the program and its arguments for error messages.
pub struct Cmd {
    inner: Command,
    line: String,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            inner: Command::new(program),
            line: program.to_string(),
        }
    }

    pub fn arg<S: AsRef<OsStr>>(mut self, arg: S) -> Self {
        let a = arg.as_ref();
        self.line.push(' ');
        self.line.push_str(&a.to_string_lossy());
        self.inner.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, key: &str, val: &str) -> Self {
        self.inner.env(key, val);
        self
    }

    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    fn output_with_stdin(mut self, stdin: Stdio) -> Result<(Output, String)> {
        let out = self
            .inner
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot start `{}`", self.line))?;
        Ok((out, self.line))
    }

    /// Run, capture stdout; fail (with stderr in the message) on a non-zero exit.
    pub fn read(self) -> Result<String> {
        let (out, line) = self.output_with_stdin(Stdio::null())?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                line,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run with `input` on stdin; fail on a non-zero exit.
    pub fn run_with_input(mut self, input: &str) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .inner
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.line))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("writing to stdin of `{}`", self.line))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", self.line))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.line,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Run and fail on a non-zero exit; output is captured and only shown on failure.
    pub fn run(self) -> Result<()> {
        self.read().map(|_| ())
    }

    /// Run with stdout/stderr passed through to the terminal (long installs).
    pub fn run_visible(mut self) -> Result<()> {
        let status = self
            .inner
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot start `{}`", self.line))?;
        if !status.success() {
            bail!("`{}` failed ({})", self.line, status);
        }
        Ok(())
    }

    /// Run and report success as a bool; no error if it exits non-zero (only if it cannot start).
    pub fn ok(self) -> Result<bool> {
        let (out, _) = self.output_with_stdin(Stdio::null())?;
        Ok(out.status.success())
    }

    /// Run and return (success, stdout, stderr) without judging the exit status.
    pub fn output(self) -> Result<(bool, String, String)> {
        let (out, _) = self.output_with_stdin(Stdio::null())?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Give access to the underlying `Command` (for spawning daemons).
    pub fn into_command(self) -> (Command, String) {
        (self.inner, self.line)
    }
}

/// Shorthand: `cmd("ip", ["-j", "link"])`.
pub fn cmd<I, S>(program: &str, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new(program).args(args)
}

/// Is `program` found on PATH (or an absolute path that exists)?
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
