//! Putting a new include in place and confirming the reload: `nginx -t` on a copy of the main
//! configuration that includes the new file, the rename, and the confirmation that the running
//! nginx serves the new generation and its old workers stopped accepting.

use std::path::Path;
use std::time::Duration;

use deploy_core::{Command, Error, ErrorKind, Result, http};

use super::UpstreamSwitch;
use super::render::replace_include;

/// How long one read of the generation may take.
pub(super) const STATUS_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a pending reload looks at the error log for a fatal error.
const LOG_CHECK_EVERY: Duration = Duration::from_millis(300);

/// Why a reload was not confirmed in time: what the switch saw last, and the last read of the
/// generation that failed, if the last look was one.
#[derive(Debug)]
pub(super) struct Unconfirmed {
    pub(super) seen: String,
    pub(super) read_error: Option<Error>,
}

impl UpstreamSwitch {
    /// The generation id the running nginx serves, if it answers.
    pub async fn live_generation(&self) -> Result<String> {
        self.live()
            .await
            .map(|(g, _)| g)
            .map_err(|e| e.context("read the live generation of", self.object()))
    }

    /// The generation id and the pid of the worker that answered.
    pub(super) async fn live(&self) -> Result<(String, Option<u32>)> {
        let url = self.generation_url();
        let body = if self.read_on_host {
            // The status address is loopback on a remote host: ask from there.
            let curl = Command::new("curl")
                .args(["-fsS", "--max-time", "2", url.as_str()])
                .timeout(Duration::from_secs(5));
            let out = self.host.run(&curl).await?;
            if !out.success() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("GET (with `curl` on {})", self.host.name()),
                    url,
                    format!("curl failed: {}", out.stderr_text().trim()),
                ));
            }
            out.stdout_text()
        } else {
            let failed = |e| http::request_error("GET", &url, Some(STATUS_READ_TIMEOUT), e);
            let resp = self.client.get(&url).send().await.map_err(failed)?;
            let status = resp.status();
            let body = resp.text().await.map_err(failed)?;
            if !status.is_success() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "GET",
                    url,
                    format!("answered {status}"),
                ));
            }
            body
        };
        let mut words = body.split_whitespace();
        let generation = words.next().unwrap_or_default().to_owned();
        Ok((generation, words.next().and_then(|p| p.parse().ok())))
    }

    /// The master's pid and its workers that accept connections (title exactly
    /// `nginx: worker process`), found from one worker's pid with `ps` on the host.
    pub(super) async fn accepting_workers(&self, worker: u32) -> Option<(u32, Vec<u32>)> {
        let host = self.host.as_ref();
        let ppid = Command::new("ps").args(["-o", "ppid=", "-p", &worker.to_string()]);
        let out = host.run(&ppid).await.ok().filter(|o| o.success())?;
        let master: u32 = out.stdout_text().trim().parse().ok()?;
        let children = Command::new("ps").args(["-o", "pid=,args=", "--ppid", &master.to_string()]);
        let out = host.run(&children).await.ok().filter(|o| o.success())?;
        let workers = out
            .stdout_text()
            .lines()
            .filter_map(|l| {
                let (pid, title) = l.trim().split_once(' ')?;
                (title.trim() == "nginx: worker process").then(|| pid.parse().ok())?
            })
            .collect();
        Some((master, workers))
    }

    /// Write `text` under a temporary name, test it with `nginx -t` through a temporary copy of
    /// the main configuration, and rename it into place. On any failure nothing is left behind.
    /// The caller says which change this was part of (its errors name the files, not the switch).
    pub(super) async fn test_and_place(&self, text: &str) -> Result<()> {
        let host = self.host.as_ref();
        let dir = self.include.parent().unwrap_or(Path::new("/"));
        let name = self
            .include
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upstream.conf".to_owned());
        let suffix = super::render::new_generation();
        let temp_include = dir.join(format!(".{name}.deploy-nginx-{suffix}.tmp"));

        let main = self.nginx.config().to_path_buf();
        let main_text = host.read_file(&main).await?;
        let main_text = String::from_utf8_lossy(&main_text);
        let Some(test_main_text) = replace_include(&main_text, &self.include, &temp_include) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "test the new include against",
                main.display().to_string(),
                format!(
                    "it has no line `include {};`, so `nginx -t` cannot test the new file before \
                     it is in place; include it from the main configuration",
                    self.include.display()
                ),
            ));
        };
        let main_dir = main.parent().unwrap_or(Path::new("/"));
        let main_name = main
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nginx.conf".to_owned());
        // Same directory as the main file: relative paths in it resolve the same way.
        let temp_main = main_dir.join(format!(".{main_name}.deploy-nginx-test-{suffix}.conf"));

        host.write_file(&temp_include, text.as_bytes(), Some(0o644))
            .await?;
        let tested = async {
            host.write_file(&temp_main, test_main_text.as_bytes(), Some(0o644))
                .await?;
            self.nginx.test_file(host, &temp_main).await
        }
        .await;
        let _ = host.remove(&temp_main).await;
        if let Err(e) = tested {
            let _ = host.remove(&temp_include).await;
            if e.kind() != ErrorKind::Rejected {
                return Err(e);
            }
            // nginx names the temporary files: say which file it tested, and that nothing moved.
            return Err(Error::new(
                ErrorKind::Rejected,
                "test the new include with `nginx -t` as",
                temp_include.display().to_string(),
                format!("{}; the include in place was not changed", e.message()),
            ));
        }
        if let Err(e) = host.rename(&temp_include, &self.include).await {
            let _ = host.remove(&temp_include).await;
            return Err(e);
        }
        Ok(())
    }

    /// Put the include that was in place before a change back: its bytes, or no file.
    pub(super) async fn put_back(&self, previous: Option<&[u8]>) -> Result<()> {
        match previous {
            Some(old) => self.host.write_file(&self.include, old, Some(0o644)).await,
            None => self.host.remove(&self.include).await,
        }
    }

    /// Poll the status server until it serves `generation`, then until the workers of the old
    /// configuration stopped accepting connections (nginx lets old and new workers accept side
    /// by side for about 100 ms after a reload), or fail after the deadline.
    pub(super) async fn confirm(
        &self,
        generation: &str,
        old_workers: &[u32],
        log_offset: Option<u64>,
    ) -> std::result::Result<(), Unconfirmed> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut next_log_check = tokio::time::Instant::now() + LOG_CHECK_EVERY;
        let mut quiet_emerg: Option<String> = None;
        let new_worker = loop {
            let last = match self.live().await {
                Ok((g, pid)) if g == generation => break pid,
                Ok((g, _)) => Unconfirmed {
                    seen: format!("it still serves generation {g}"),
                    read_error: None,
                },
                Err(e) => Unconfirmed {
                    seen: "its status address does not answer".to_owned(),
                    read_error: Some(e),
                },
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(last);
            }
            // Give up early when the master logged an `[emerg]` as its last word and then
            // stayed quiet for a whole check period: the reload failed and nginx kept the old
            // configuration (a busy `listen` ends with "still could not bind()").
            if now >= next_log_check {
                next_log_check = now + LOG_CHECK_EVERY;
                let new = self
                    .nginx
                    .error_log_new(self.host.as_ref(), log_offset)
                    .await;
                let ends_in_emerg = new.as_deref().is_some_and(|t| {
                    t.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .is_some_and(|l| l.contains("[emerg]"))
                });
                match (&quiet_emerg, new) {
                    (Some(before), Some(now)) if ends_in_emerg && *before == now => {
                        return Err(Unconfirmed {
                            seen: format!("{}, and nginx logged a fatal error", last.seen),
                            ..last
                        });
                    }
                    (_, Some(now)) if ends_in_emerg => quiet_emerg = Some(now),
                    _ => quiet_emerg = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seen = tokio::time::Instant::now();
        loop {
            let accepting = match new_worker {
                Some(pid) => self.accepting_workers(pid).await,
                None => None,
            };
            match accepting {
                Some((_, now)) if !now.iter().any(|p| old_workers.contains(p)) => {
                    // The title changes just before the listeners close.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Ok(());
                }
                Some(_) => {}
                // No `ps` on the host: nginx signals the old workers 100 ms after it started
                // the new ones; wait well past that.
                None if seen.elapsed() >= Duration::from_millis(300) => return Ok(()),
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Unconfirmed {
                    seen: format!(
                        "the new generation is served, but old workers {old_workers:?} still accept connections"
                    ),
                    read_error: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
