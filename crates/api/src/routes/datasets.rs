//! Research datasets: anonymization previews and differentially private counts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use medmesh_anon::dp::{Budget, CountAnswer, CountQuery, Filter, FilterOp, Mechanism};
use medmesh_anon::Policy;
use medmesh_api_types::{
    BudgetRequest, BudgetView, CountCell, CountRequest, CountResponse, DatasetPreview,
    DatasetPreviewRequest,
};
use medmesh_core::PatientRef;
use medmesh_service::DatasetSource;
use medmesh_store::RecordQuery;

use super::records::{parse_id, parse_time};
use super::ApiJson;
use crate::auth::{Admin, Authorized, Read};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Rows of the released table a preview returns at most.
const MAX_SAMPLE_ROWS: usize = 100;

/// Anonymize a table (CSV, or this institution's records) under a policy, storing
/// nothing: Safe Harbor's report, the optimal generalization and a sample of the
/// released table.
#[utoipa::path(
    post,
    path = "/v1/datasets/preview",
    tag = "datasets",
    request_body = DatasetPreviewRequest,
    responses(
        (status = 200, body = DatasetPreview),
        (status = 400, description = "Malformed request (neither or both of csv and records, bad time)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No record matches the selection", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The policy, a hierarchy, a mapping or the data is unusable (the detail names the column and value)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `read`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Another anonymization is running", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn preview(
    State(state): State<AppState>,
    caller: Authorized<Read>,
    ApiJson(request): ApiJson<DatasetPreviewRequest>,
) -> Result<axum::Json<DatasetPreview>, ApiError> {
    let sample_rows = request.sample_rows.unwrap_or(20);
    if sample_rows > MAX_SAMPLE_ROWS {
        return Err(ApiError::bad_request(format!(
            "`sample_rows` is at most {MAX_SAMPLE_ROWS}"
        )));
    }
    let mut policy = Policy::from_untrusted_toml(&request.policy)
        .map_err(|e| ApiError::from(medmesh_service::ServiceError::from(e)))?;
    for (column, csv) in request.hierarchies {
        policy
            .add_hierarchy(&column, csv)
            .map_err(|e| ApiError::from(medmesh_service::ServiceError::from(e)))?;
    }
    let source = match (request.csv, request.records) {
        (Some(csv), None) => DatasetSource::Csv(csv.into_bytes()),
        (None, Some(selection)) => DatasetSource::Records(RecordQuery {
            owner: None,
            patient: selection
                .patient
                .as_deref()
                .map(PatientRef::new)
                .transpose()?,
            content_type: selection
                .content_type
                .as_deref()
                .map(str::parse)
                .transpose()?,
            since: parse_time("since", selection.since.as_deref())?,
            until: parse_time("until", selection.until.as_deref())?,
            limit: 0,
        }),
        _ => {
            return Err(ApiError::bad_request(
                "give the table as `csv` or select `records`, one of the two",
            ))
        }
    };
    let release = state
        .services()
        .anonymize_dataset(source, policy, &caller.actor())
        .await?;
    let (columns, sample) = match &release.table {
        Some(table) => (
            table.names().to_vec(),
            (0..table.len().min(sample_rows))
                .map(|row| table.row(row).into_iter().map(str::to_owned).collect())
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let report = serde_json::to_value(&release)
        .map_err(|e| ApiError::internal("writing the anonymization report", e))?;
    Ok(axum::Json(DatasetPreview {
        report,
        columns,
        sample,
    }))
}

fn budget_view(b: &Budget) -> BudgetView {
    let (epsilon_remaining, delta_remaining) = b.remaining();
    BudgetView {
        epsilon_total: b.epsilon_total,
        delta_total: b.delta_total,
        epsilon_spent: b.epsilon_spent,
        delta_spent: b.delta_spent,
        epsilon_remaining,
        delta_remaining,
    }
}

/// Set a dataset's privacy budget (once; the dataset is a CSV record of this
/// institution).
#[utoipa::path(
    put,
    path = "/v1/datasets/{id}/budget",
    tag = "datasets",
    params(("id" = String, Path, description = "The dataset's record id")),
    request_body = BudgetRequest,
    responses(
        (status = 201, body = BudgetView),
        (status = 400, description = "Malformed request: a bad record id, or a body that is not JSON of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The dataset has a budget already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "ε or δ out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `admin`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn set_budget(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<BudgetRequest>,
) -> Result<(StatusCode, axum::Json<BudgetView>), ApiError> {
    let budget = state
        .services()
        .set_dp_budget(
            parse_id(&id)?,
            request.epsilon,
            request.delta,
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(budget_view(&budget))))
}

/// A dataset's privacy budget: totals, spent and remaining.
#[utoipa::path(
    get,
    path = "/v1/datasets/{id}/budget",
    tag = "datasets",
    params(("id" = String, Path, description = "The dataset's record id")),
    responses(
        (status = 200, body = BudgetView),
        (status = 400, description = "Not a record id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The dataset has no budget", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks `read`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn budget(
    State(state): State<AppState>,
    _caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<axum::Json<BudgetView>, ApiError> {
    let budget = state.services().dp_budget(parse_id(&id)?).await?;
    Ok(axum::Json(budget_view(&budget)))
}

/// A differentially private count over a dataset, charged to its budget (refused,
/// with what remains, when the budget cannot pay for it). Every query is audited.
#[utoipa::path(
    post,
    path = "/v1/datasets/{id}/counts",
    tag = "datasets",
    params(("id" = String, Path, description = "The dataset's record id")),
    request_body = CountRequest,
    responses(
        (status = 200, body = CountResponse),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed query (a bad record id, a filter with no test or two, a body not of this shape)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The budget cannot pay for the query (the detail says what remains), or the token lacks `read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dataset, or it has no budget", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown column, missing group domain, ε or δ out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn count(
    State(state): State<AppState>,
    caller: Authorized<Read>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CountRequest>,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let query = count_query(request)?;
    let (answer, budget) = state
        .services()
        .dp_count(parse_id(&id)?, query, &caller.actor())
        .await?;
    Ok(axum::Json(count_response(answer, &budget)))
}

fn count_query(request: CountRequest) -> Result<CountQuery, ApiError> {
    let mechanism = match (request.mechanism.as_str(), request.delta) {
        ("laplace", None) => Mechanism::Laplace {
            epsilon: request.epsilon,
        },
        ("laplace", Some(_)) => {
            return Err(ApiError::bad_request(
                "the laplace mechanism is pure ε-DP: it takes no `delta`",
            ))
        }
        ("gaussian", Some(delta)) => Mechanism::Gaussian {
            epsilon: request.epsilon,
            delta,
        },
        ("gaussian", None) => {
            return Err(ApiError::bad_request(
                "the gaussian mechanism needs `delta`",
            ))
        }
        (other, _) => {
            return Err(ApiError::bad_request(format!(
                "`mechanism` `{other}` is not one the node has (laplace or gaussian)"
            )))
        }
    };
    let filters = request
        .filters
        .into_iter()
        .map(|f| {
            let op = match (f.equals, f.one_of, f.min, f.max) {
                (Some(v), None, None, None) => FilterOp::Equals(v),
                (None, Some(vs), None, None) => FilterOp::In(vs),
                (None, None, min, max) if min.is_some() || max.is_some() => {
                    FilterOp::Range { min, max }
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "the filter on `{}` needs exactly one test: `equals`, `in`, or \
                         `min`/`max`",
                        f.column
                    )))
                }
            };
            Ok(Filter {
                column: f.column,
                op,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CountQuery {
        filters,
        group_by: request.group_by,
        group_domains: request.group_domains,
        mechanism,
        clamp_at_zero: request.clamp_at_zero,
    })
}

fn count_response(answer: CountAnswer, budget: &Budget) -> CountResponse {
    CountResponse {
        mechanism: match answer.mechanism {
            Mechanism::Laplace { .. } => "laplace",
            Mechanism::Gaussian { .. } => "gaussian",
        }
        .to_string(),
        epsilon_spent: answer.epsilon_spent,
        delta_spent: answer.delta_spent,
        noise_scale: answer.noise_scale,
        group_by: answer.group_by,
        counts: answer
            .groups
            .into_iter()
            .map(|g| CountCell {
                key: g.key,
                count: g.count,
            })
            .collect(),
        budget: budget_view(budget),
    }
}
