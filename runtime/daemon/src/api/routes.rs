//! Every route of the API, each with its OpenAPI description. Handlers read the supervisor's
//! snapshot, ask the host (runs) or the supervisor (replicate now), or follow the event bus.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use lifeboat_orchestrator::operations::{CleanupReport, Committed, FailoverRequest};
use lifeboat_orchestrator::record::RunRecord;
use lifeboat_plan::plan::Operation;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::oneshot;
use utoipa::{Modify, OpenApi};

use super::Api;
use crate::api_error::ApiError;
use crate::messages::{Command, CommandError};
use lifeboat_api::Status;
use lifeboat_api::error::ErrorBody;
use lifeboat_api::requests::{
    Approval, ApproveBody, EventsQuery, FailoverBody, PlanInfo, ReplicateQuery, Replicated,
    Retried, RetryBody, RunSummary, Started,
};
use lifeboat_api::{Notice, NoticeKind};

/// A supervisor that has not gone round its loop for this long is not healthy.
const STALLED: Duration = Duration::from_secs(10);

/// The longest `replicate?wait=true` waits for the cycle.
const REPLICATE_WAIT: Duration = Duration::from_secs(3600);

pub(super) fn all() -> Router<Api> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/plans", get(plans))
        .route("/v1/plans/{plan}/failover", post(failover))
        .route("/v1/plans/{plan}/cleanup", post(cleanup))
        .route("/v1/plans/{plan}/commit", post(commit))
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{run}", get(run))
        .route("/v1/runs/{run}/approve", post(approve))
        .route("/v1/runs/{run}/retry", post(retry))
        .route("/v1/runs/{run}/skip", post(skip))
        .route("/v1/runs/{run}/cancel", post(cancel))
        .route("/v1/groups/{group}/replicate", post(replicate))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeboat daemon API",
        description = "Drive a running `lifeboat daemon`: status, plans, runs (failover, cleanup, commit, approve, retry, skip, cancel), replicate now, the event stream, metrics and health. On the daemon's Unix socket (`STATE/daemon.sock`, mode 0600) no token is needed; on TCP (`--listen`) every route needs `Authorization: Bearer TOKEN`. Errors are `ErrorBody` documents whose `exit_code` is what the `lifeboat` CLI exits with for the same failure."
    ),
    paths(
        status, plans, failover, cleanup, commit, runs, run, approve, retry, skip, cancel,
        replicate, events, openapi, metrics, healthz, readyz
    ),
    components(schemas(ErrorBody, Notice)),
    modifiers(&Bearer)
)]
pub(super) struct Doc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("Required on TCP; the Unix socket needs none."))
                        .build(),
                ),
            );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// A JSON body, or the default when the request has none; bad JSON is a 400.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

#[utoipa::path(get, path = "/v1/status", tag = "status",
    responses((status = 200, description = "Every protected VM and group: RPO, last point, state, next cycle, last error; the daemon and its config.", body = Status)))]
async fn status(State(api): State<Api>) -> axum::Json<Status> {
    let snap = api.snapshots.borrow().clone();
    axum::Json(snap.status(SystemTime::now()))
}

#[utoipa::path(get, path = "/v1/plans", tag = "plans",
    responses((status = 200, description = "Every plan of the plans folder with its validation.", body = Vec<PlanInfo>)))]
async fn plans(State(api): State<Api>) -> Result<axum::Json<Vec<PlanInfo>>, ApiError> {
    let config = api.snapshots.borrow().config.clone();
    let file = config.file.clone();
    let loaded = config.plan_files();
    let mut out = tokio::task::spawn_blocking(move || {
        lifeboat_loader::default_plans(&file)
            .into_iter()
            .map(|path| {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let problems = crate::config::plan(&file, &path).err().unwrap_or_default();
                let file_name = path
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                PlanInfo {
                    valid: problems.is_empty(),
                    loaded: loaded.contains(&file_name),
                    name,
                    file: path.display().to_string(),
                    problems,
                    open_run: None,
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("validation stopped: {e}")))?;
    if let Some(journal) = api.host.journal()? {
        let mut runs = Vec::new();
        for (id, ..) in journal.runs().map_err(|e| ApiError::of_run(&e.into()))? {
            runs.push(
                lifeboat_orchestrator::runs::status_of(&journal, &id)
                    .map_err(|e| ApiError::of_run(&e))?,
            );
        }
        for p in &mut out {
            // The journal names plans by their `name`; the file is named the same by convention.
            p.open_run = runs
                .iter()
                .find(|r| r.open() && (r.plan == p.name || r.plan_path == p.file))
                .map(|r| r.id.clone());
        }
    }
    Ok(axum::Json(out))
}

#[utoipa::path(post, path = "/v1/plans/{plan}/failover", tag = "runs",
    params(("plan" = String, Path, description = "The plan's file name in the plans folder, without `.toml`.")),
    request_body = FailoverBody,
    responses(
        (status = 202, description = "Every check passed and the run is recorded; the daemon drives it (follow `/v1/events`, read `/v1/runs/{run}`).", body = Started),
        (status = 400, description = "Bad JSON or an unknown operation.", body = ErrorBody),
        (status = 404, description = "No such plan (`exit_code` 3, as the CLI for a plan file it cannot find).", body = ErrorBody),
        (status = 409, description = "Refused: an open run of the plan, no point, a source VM still answering, a group's lease held elsewhere (`busy`).", body = ErrorBody),
        (status = 422, description = "The plan does not validate.", body = ErrorBody)))]
async fn failover(
    State(api): State<Api>,
    Path(plan): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, axum::Json<Started>), ApiError> {
    let req: FailoverBody = body(&bytes)?;
    let op = match Operation::parse(&req.operation) {
        Some(
            op
            @ (Operation::Test | Operation::Planned | Operation::Unplanned | Operation::Failback),
        ) => op,
        _ => {
            return Err(ApiError::bad_request(format!(
                "`operation` must be `test`, `planned`, `unplanned` or `failback`, not `{}`",
                req.operation
            )));
        }
    };
    let begun = api
        .host
        .failover(
            &plan,
            FailoverRequest {
                op,
                point: req.point,
                force: req.force,
                reverse: req.reverse,
                instant: req.instant,
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Started {
            run: begun.id,
            plan,
            operation: op.name().to_string(),
            source_stopped: begun.source_stopped.into_iter().map(|h| h.vm).collect(),
        }),
    ))
}

#[utoipa::path(post, path = "/v1/plans/{plan}/cleanup", tag = "runs",
    params(("plan" = String, Path, description = "The plan's file name, without `.toml`.")),
    responses(
        (status = 200, description = "Every finished step undone (newest first), the run's VMs stopped and disks deleted, its points unpinned.", body = CleanupReport),
        (status = 404, description = "No such plan (`exit_code` 3, as the CLI for a plan file it cannot find).", body = ErrorBody),
        (status = 409, description = "No open run to clean up, or it is being driven.", body = ErrorBody)))]
async fn cleanup(
    State(api): State<Api>,
    Path(plan): Path<String>,
) -> Result<axum::Json<CleanupReport>, ApiError> {
    Ok(axum::Json(api.host.cleanup(&plan).await?))
}

#[utoipa::path(post, path = "/v1/plans/{plan}/commit", tag = "runs",
    params(("plan" = String, Path, description = "The plan's file name, without `.toml`.")),
    responses(
        (status = 200, description = "Every group the failover booted is taken over at the target; the old source is fenced.", body = Vec<Committed>),
        (status = 404, description = "No such plan (`exit_code` 3, as the CLI for a plan file it cannot find).", body = ErrorBody),
        (status = 409, description = "No finished failover to commit.", body = ErrorBody)))]
async fn commit(
    State(api): State<Api>,
    Path(plan): Path<String>,
) -> Result<axum::Json<Vec<Committed>>, ApiError> {
    Ok(axum::Json(api.host.commit(&plan).await?))
}

fn group_of(groups: &[lifeboat_replication::GroupSpec]) -> impl Fn(&str) -> Option<String> + '_ {
    move |vm| {
        groups
            .iter()
            .find(|g| g.vms.iter().any(|v| v.name == vm))
            .map(|g| g.name.clone())
    }
}

#[utoipa::path(get, path = "/v1/runs", tag = "runs",
    responses((status = 200, description = "Every run, newest first.", body = Vec<RunSummary>)))]
async fn runs(State(api): State<Api>) -> Result<axum::Json<Vec<RunSummary>>, ApiError> {
    let Some(journal) = api.host.journal()? else {
        return Ok(axum::Json(Vec::new()));
    };
    let groups = api.host.groups();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (id, ..) in journal.runs()? {
            let info = lifeboat_orchestrator::runs::status_of(&journal, &id)?;
            let r = lifeboat_orchestrator::record::record(&journal, &info.id, &group_of(&groups))?;
            out.push(RunSummary {
                id: r.id,
                plan: r.plan,
                operation: r.operation.to_string(),
                status: r.status,
                started_unix_ms: r.started_unix_ms,
                rto_seconds: r.rto_seconds,
                driver_pid: info.driver_pid,
            });
        }
        Ok::<_, lifeboat_orchestrator::error::Error>(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    read.map(axum::Json).map_err(|e| ApiError::of_run(&e))
}

#[utoipa::path(get, path = "/v1/runs/{run}", tag = "runs",
    params(("run" = String, Path, description = "The run's id, e.g. `app-1`.")),
    responses(
        (status = 200, description = "The run as `lifeboat runs show --output json` prints it: groups, steps with their logs, VMs, points, RPO and RTO, the timeline.", body = RunRecord),
        (status = 404, description = "No such run.", body = ErrorBody)))]
async fn run(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<axum::Json<RunRecord>, ApiError> {
    let Some(journal) = api.host.journal()? else {
        return Err(ApiError::of_run(
            &lifeboat_orchestrator::error::Error::NoRun { run: id },
        ));
    };
    let groups = api.host.groups();
    let placements = api.host.placements();
    let read = tokio::task::spawn_blocking(move || {
        lifeboat_orchestrator::runs::status_of(&journal, &id)?;
        lifeboat_orchestrator::record::record(&journal, &id, &group_of(&groups))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    read.map(|r| axum::Json(r.with_placements(placements.values())))
        .map_err(|e| ApiError::of_run(&e))
}

#[utoipa::path(post, path = "/v1/runs/{run}/approve", tag = "runs",
    params(("run" = String, Path, description = "The run's id.")),
    request_body(content = ApproveBody, description = "Optional."),
    responses(
        (status = 200, description = "The pending approval is given; the run goes on.", body = Approval),
        (status = 400, description = "Bad JSON.", body = ErrorBody),
        (status = 404, description = "No such run.", body = ErrorBody),
        (status = 409, description = "The run is not waiting for an approval.", body = ErrorBody)))]
async fn approve(
    State(api): State<Api>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<axum::Json<Approval>, ApiError> {
    let req: ApproveBody = body(&bytes)?;
    let by = req
        .by
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "api".into());
    let message = api.host.approve(&id, &by)?;
    Ok(axum::Json(Approval {
        run: id,
        message,
        by,
    }))
}

#[utoipa::path(post, path = "/v1/runs/{run}/retry", tag = "runs",
    params(("run" = String, Path, description = "The run's id.")),
    request_body(content = RetryBody, description = "Optional."),
    responses(
        (status = 202, description = "The daemon drives the run again from where the journal says it stopped (a run that succeeded ends at once, succeeded, as `lifeboat retry` does).", body = Retried),
        (status = 400, description = "Bad JSON.", body = ErrorBody),
        (status = 404, description = "No such run.", body = ErrorBody),
        (status = 409, description = "The run is closed (cleaned up or committed), or another process drives it.", body = ErrorBody)))]
async fn retry(
    State(api): State<Api>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, axum::Json<Retried>), ApiError> {
    let req: RetryBody = body(&bytes)?;
    let skipped = api.host.retry(&id, req.skip).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Retried { run: id, skipped }),
    ))
}

#[utoipa::path(post, path = "/v1/runs/{run}/skip", tag = "runs",
    params(("run" = String, Path, description = "The run's id.")),
    responses(
        (status = 202, description = "The failed step is marked skipped and the daemon drives the run on.", body = Retried),
        (status = 404, description = "No such run.", body = ErrorBody),
        (status = 409, description = "The run has no failed step.", body = ErrorBody)))]
async fn skip(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<Retried>), ApiError> {
    let skipped = api.host.retry(&id, true).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Retried { run: id, skipped }),
    ))
}

#[utoipa::path(post, path = "/v1/runs/{run}/cancel", tag = "runs",
    params(("run" = String, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The run ends cancelled at the step it is in; it stays open for cleanup.", body = Retried),
        (status = 404, description = "No such run.", body = ErrorBody),
        (status = 409, description = "Nothing to cancel.", body = ErrorBody)))]
async fn cancel(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<axum::Json<Retried>, ApiError> {
    api.host.cancel(&id)?;
    Ok(axum::Json(Retried {
        run: id,
        skipped: None,
    }))
}

#[utoipa::path(post, path = "/v1/groups/{group}/replicate", tag = "replication",
    params(("group" = String, Path, description = "The consistency group (a lone VM is its own)."), ReplicateQuery),
    responses(
        (status = 202, description = "A cycle starts now (or right after the one in flight).", body = Replicated),
        (status = 200, description = "With `wait`: the cycle committed.", body = Replicated),
        (status = 404, description = "No such group.", body = ErrorBody),
        (status = 409, description = "A failover holds the group, another writer holds its lease (`busy`: this daemon stands by), or (with `wait`) the cycle failed.", body = ErrorBody)))]
async fn replicate(
    State(api): State<Api>,
    Path(group): Path<String>,
    Query(q): Query<ReplicateQuery>,
) -> Result<Response, ApiError> {
    // Subscribed before asking: the cycle's end cannot be missed.
    let (_, mut feed) = api.bus.subscribe(None);
    let (reply, answer) = oneshot::channel();
    api.host
        .command(Command::ReplicateNow {
            group: group.clone(),
            reply,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match answer.await {
        Ok(Ok(())) => {}
        Ok(Err(CommandError::NoGroup(g))) => {
            return Err(ApiError::not_found(format!("no protected group `{g}`")));
        }
        Ok(Err(CommandError::Busy(writer))) => {
            return Err(ApiError::busy(format!("group {group}: {writer}")));
        }
        Ok(Err(CommandError::Held { group, by })) => {
            return Err(ApiError::refused(format!(
                "group {group} is not replicated from its source while {by} holds it"
            )));
        }
        Err(_) => return Err(ApiError::internal("the daemon is stopping")),
    }
    if !q.wait {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(Replicated { group, cycle: None }),
        )
            .into_response());
    }
    let ended = tokio::time::timeout(REPLICATE_WAIT, async {
        loop {
            match feed.recv().await {
                Ok(n)
                    if n.group.as_deref() == Some(group.as_str())
                        && (n.kind == NoticeKind::CycleCommitted
                            || n.kind == NoticeKind::CycleFailed) =>
                {
                    return Some(n);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    match ended {
        Ok(Some(n)) if n.kind == NoticeKind::CycleCommitted => Ok(axum::Json(Replicated {
            group,
            cycle: Some((*n).clone()),
        })
        .into_response()),
        Ok(Some(n)) => Err(ApiError::refused(n.message.clone())),
        Ok(None) => Err(ApiError::internal("the daemon is stopping")),
        Err(_) => Err(ApiError::internal(format!(
            "no cycle of group {group} ended within {REPLICATE_WAIT:?}"
        ))),
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "The last id seen: the stream resumes after it.")),
    responses((status = 200, description = "A server-sent event stream: each event's `event` is the notice's kind, its `id` the notice's id, its `data` the notice (JSON).", content_type = "text/event-stream", body = Notice)))]
async fn events(
    State(api): State<Api>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let after = q.after.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    let (missed, feed) = api.bus.subscribe(after);
    let follow = Follow {
        missed: missed.into(),
        feed,
        last: after.unwrap_or(0),
        api,
        run: q.run,
        group: q.group,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let n = f.next().await?;
        let sse = SseEvent::default()
            .id(n.id.to_string())
            .event(n.kind.as_str())
            .data(serde_json::to_string(&*n).unwrap_or_default());
        Some((Ok(sse), f))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One client's place in the event stream.
struct Follow {
    missed: VecDeque<Arc<Notice>>,
    feed: broadcast::Receiver<Arc<Notice>>,
    last: u64,
    api: Api,
    run: Option<String>,
    group: Option<String>,
}

impl Follow {
    /// The next notice for this client; `None` when the daemon stops.
    async fn next(&mut self) -> Option<Arc<Notice>> {
        loop {
            let n = match self.missed.pop_front() {
                Some(n) => n,
                None => tokio::select! {
                    got = self.feed.recv() => match got {
                        Ok(n) => n,
                        // Fell behind the live feed: catch up from the kept ones.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.missed = self.api.bus.since(self.last).into();
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = self.api.stopping.wait_for(|s| *s) => return None,
                },
            };
            if n.id <= self.last {
                continue;
            }
            self.last = n.id;
            let wanted = self.run.as_ref().is_none_or(|r| n.run.as_ref() == Some(r))
                && self
                    .group
                    .as_ref()
                    .is_none_or(|g| n.group.as_ref() == Some(g));
            if wanted {
                return Some(n);
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document.", content_type = "application/json")))]
async fn openapi() -> Response {
    match super::openapi().to_pretty_json() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition 0.0.4: RPO per VM and group, cycles, bytes, failures, points, repository bytes, reloads.", content_type = "text/plain")))]
async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let snap = api.snapshots.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&snap, SystemTime::now()),
    )
}

#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The supervisor goes round its loop.", content_type = "text/plain"),
              (status = 503, description = "The supervisor is stalled.", content_type = "text/plain")))]
async fn healthz(State(api): State<Api>) -> impl IntoResponse {
    let snap = api.snapshots.borrow().clone();
    if snap.heartbeat.elapsed() < STALLED {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is stalled\n",
        )
    }
}

#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "Every group's task has started.", content_type = "text/plain"),
              (status = 503, description = "Starting or stopping.", content_type = "text/plain")))]
async fn readyz(State(api): State<Api>) -> impl IntoResponse {
    let snap = api.snapshots.borrow().clone();
    if snap.daemon.ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
    }
}
