//! `roadie.v1.Jobs`: designed with the rest of the API; implemented with the
//! fetch job queue.

use roadie_proto::v1::{self as pb, jobs_server::Jobs};
use tonic::{Request, Response, Status};

/// The Jobs service, answering UNIMPLEMENTED until the job queue lands.
#[derive(Debug, Clone, Default)]
pub struct JobsService;

const NOT_YET: &str =
    "roadie.v1.Jobs is not implemented yet: it arrives with the fetch job queue and roadie-worker";

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn get_job(
        &self,
        _: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn retry_job(
        &self,
        _: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }
}
