//! `roadie.v1.Jobs`: inspect and steer the fetch-job queue.

use std::sync::Arc;

use roadie_proto::v1::{self as pb, jobs_server::Jobs};
use roadie_store::{Job, JobState, StoreError, now_ms};
use tonic::{Request, Response, Status};

use crate::{
    convert::job_to_proto,
    error::ApiError,
    state::AppState,
    validate::{self, FieldError},
};

/// The Jobs service.
#[derive(Debug, Clone)]
pub struct JobsService {
    state: Arc<AppState>,
}

impl JobsService {
    /// The service over `state`.
    pub fn new(state: Arc<AppState>) -> JobsService {
        JobsService { state }
    }

    async fn existing(&self, id: u64) -> Result<Job, ApiError> {
        self.state
            .store
            .job_get(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let job = self.existing(request.into_inner().id).await?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_to_proto(job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let state = match pb::JobState::try_from(req.state) {
            Ok(pb::JobState::Unspecified) => None,
            Ok(state) => Some(state_from_proto(state)),
            Err(_) => {
                return Err(ApiError::from(FieldError::new(
                    "state",
                    format!("unknown JobState {}", req.state),
                ))
                .into());
            }
        };
        let page_size = validate::page_size("page_size", req.page_size).map_err(ApiError::from)?;
        let before = if req.page_token.is_empty() {
            u64::MAX
        } else {
            req.page_token.parse::<u64>().map_err(|_| {
                ApiError::from(FieldError::new(
                    "page_token",
                    "is not a token this server issued",
                ))
            })?
        };
        let provider = (!req.provider.is_empty()).then_some(req.provider.as_str());
        // One more than the page tells whether another page follows.
        let mut jobs = self
            .state
            .store
            .job_list(state, provider, before, page_size + 1)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = if jobs.len() > page_size as usize {
            jobs.truncate(page_size as usize);
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(job_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self
            .state
            .store
            .job_cancel(id, now_ms())
            .await
            .map_err(ApiError::from)?;
        let job = job.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job_to_proto(job)),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self.existing(id).await?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(ApiError::FailedPrecondition(format!(
                "job {id} is {}; only failed or cancelled jobs can be retried",
                job.state.as_str()
            ))
            .into());
        }
        let job = match self.state.store.job_retry(id, now_ms()).await {
            Ok(job) => job.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "another unfinished job already fetches {}",
                    job.url
                ))
                .into());
            }
            Err(error) => return Err(ApiError::from(error).into()),
        };
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job_to_proto(job)),
        }))
    }
}

fn state_from_proto(state: pb::JobState) -> JobState {
    match state {
        pb::JobState::Unspecified | pb::JobState::Available => JobState::Available,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Completed => JobState::Completed,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
    }
}
