//! The evaluation loop `faccia serve` runs: every `evaluate_interval_s`, each enabled rule's
//! SQL over the server's own context (which sees the engine's memory, so the votes of the last
//! second count), the lifecycle's events recorded, counted and handed to the webhook.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use tokio::sync::watch;

use crate::alerts::AlertsConfig;
use crate::alerts::rules::{self, Condition, Rule, Slot};
use crate::alerts::store::{self, Event, EventKind, Lifecycle, Log, StoreError};
use crate::alerts::webhook::{self, Target, Webhook};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::transport::tls::{self, TlsError};

/// How long the terminals' usual slots are kept before they are learned again, in ms (an hour:
/// weeks of history do not change by the minute, and reading them is the costly query).
const USUAL_SLOTS_REFRESH_MS: i64 = 3_600_000;

/// The rules, their state and where events go.
pub struct Evaluator {
    ctx: SessionContext,
    config: AlertsConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    webhook: Option<Webhook>,
    usual: Option<(i64, BTreeMap<u32, BTreeSet<Slot>>)>,
}

/// The webhook's TLS: the system's roots and `ca`; an https URL needs at least one root.
fn webhook_tls(url: &str, ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = tls::https_roots(ca)?;
    if url.starts_with("https:") && roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    tls::https_client_config(roots)
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").field("config", &self.config).field("lifecycle", &self.lifecycle).finish_non_exhaustive()
    }
}

impl Evaluator {
    /// Opens the alerts' state in `data_dir` (the firing alerts are known again, and counted in
    /// `faccia_alerts_firing`) and, with a `webhook_url`, starts delivery (it needs a tokio runtime).
    ///
    /// # Errors
    /// When the event file, the delivery log or the generated secret cannot be read or created,
    /// or `webhook_ca` cannot be read (`StoreError::WebhookTls`).
    pub fn open(
        ctx: SessionContext,
        data_dir: &Path,
        config: AlertsConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Evaluator, StoreError> {
        let lifecycle = Lifecycle::open(data_dir)?;
        let webhook = match &config.webhook_url {
            None => None,
            Some(url) => {
                let target = Target {
                    url: webhook::parse_url(url).expect("checked with the configuration"),
                    secret: webhook::secret(data_dir, config.webhook_secret.as_deref())?,
                    attempts_max: config.webhook_attempts_max,
                    backoff_ms: config.webhook_backoff_ms,
                    timeout_ms: config.webhook_timeout_ms,
                    tls: webhook_tls(url, config.webhook_ca.as_deref()).map_err(StoreError::WebhookTls)?,
                };
                let log = Log::open(data_dir, store::DELIVERIES_FILE)?;
                Some(Webhook::start(target, log, Arc::clone(&metrics), Arc::clone(&clock)))
            }
        };
        let evaluator = Evaluator { ctx, config, clock, metrics, lifecycle, webhook, usual: None };
        evaluator.count_firing();
        Ok(evaluator)
    }

    fn count_firing(&self) {
        for rule in Rule::ALL {
            let firing = self.lifecycle.firing().values().filter(|e| e.rule == rule).count();
            self.metrics.set_alerts_firing(rule.name(), firing as i64);
        }
    }

    /// Runs one evaluation now; returns the events it recorded (each handed to the webhook).
    /// A rule whose query fails is skipped (logged) and its alerts stay as they are.
    ///
    /// # Errors
    /// When an event cannot be recorded.
    pub async fn evaluate(&mut self) -> Result<Vec<Event>, StoreError> {
        let now_ms = self.clock.now_ms();
        let (conditions, evaluated) = self.conditions(now_ms).await;
        let events = self.lifecycle.apply(&conditions, &evaluated, now_ms)?;
        for event in &events {
            if event.event == EventKind::Fired {
                self.metrics.alert_raised(event.rule.name());
            }
            tracing::info!(alert = %event.alert_id, event = event.event.name(), message = %event.message, "alert");
            if let Some(webhook) = &self.webhook {
                webhook.send(event.clone());
            }
        }
        self.count_firing();
        Ok(events)
    }

    /// The conditions met at `now_ms`, and the rules evaluated (enabled, and whose query ran).
    async fn conditions(&mut self, now_ms: i64) -> (Vec<Condition>, Vec<Rule>) {
        let mut conditions = Vec::new();
        let mut evaluated = Vec::new();
        for rule in Rule::ALL {
            let found = match rule {
                Rule::RedShare if self.config.red_share.enabled => rules::red_share(&self.ctx, &self.config.red_share, now_ms).await,
                Rule::TerminalSilent if self.config.terminal_silent.enabled => self.terminal_silent(now_ms).await,
                Rule::MisuseBurst if self.config.misuse_burst.enabled => {
                    rules::misuse_burst(&self.ctx, &self.config.misuse_burst, now_ms).await
                }
                Rule::ClockFault if self.config.clock_fault.enabled => {
                    rules::clock_fault(&self.ctx, &self.config.clock_fault, now_ms).await
                }
                _ => continue,
            };
            match found {
                Ok(found) => {
                    conditions.extend(found);
                    evaluated.push(rule);
                }
                Err(error) => tracing::warn!(rule = rule.name(), %error, "alert rule not evaluated; its alerts stay as they are"),
            }
        }
        (conditions, evaluated)
    }

    async fn terminal_silent(&mut self, now_ms: i64) -> datafusion::error::Result<Vec<Condition>> {
        let rule = &self.config.terminal_silent;
        let stale = self.usual.as_ref().is_none_or(|(at, _)| now_ms - at >= USUAL_SLOTS_REFRESH_MS || now_ms < *at);
        if stale {
            self.usual = Some((now_ms, rules::usual_slots(&self.ctx, rule, now_ms).await?));
        }
        let usual = &self.usual.as_ref().expect("just learned").1;
        rules::terminal_silent(&self.ctx, rule, usual, now_ms).await
    }
}

/// Starts the evaluation task when `[alerts] enabled`: an evaluation every
/// `evaluate_interval_s` until `shutdown` says stop.
///
/// # Errors
/// As `Evaluator::open`.
pub fn spawn(
    ctx: SessionContext,
    data_dir: &Path,
    config: AlertsConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
    if !config.enabled {
        return Ok(None);
    }
    let interval = Duration::from_secs(config.evaluate_interval_s);
    let mut evaluator = Evaluator::open(ctx, data_dir, config, clock, metrics)?;
    Ok(Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Err(error) = evaluator.evaluate().await {
                tracing::warn!(error = %crate::error_chain(&error), "alert events not recorded; the next evaluation tries again");
            }
        }
    })))
}
