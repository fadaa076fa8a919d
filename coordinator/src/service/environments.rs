//! The environment calls: declaring one, applying a pipeline file, reading them (what
//! each needs: their rows of `access::table`).

use lockstep::{names::Environment, pb};
use tonic::{Request, Response, Status};

use super::{CoordinatorService, reads};
use crate::{
    access::{Principal, table::Target},
    model::EnvironmentRecord,
    registry::environments::EnvironmentView,
};

impl CoordinatorService {
    pub(super) async fn declare_environment(
        &self,
        request: Request<pb::AddEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentInfo>, Status> {
        let r = request.get_ref();
        let name = Environment::parse("name", &r.name)?;
        let mut after = r
            .after
            .iter()
            .enumerate()
            .map(|(i, a)| Environment::parse(&format!("after[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        after.sort();
        after.dedup();
        let who = self
            .allow(&request, "AddEnvironment", Target::environment(&name))
            .await?;
        let record = EnvironmentRecord {
            name: name.clone(),
            after,
            created_by: who.actor_or(""),
            stages: Default::default(),
            pipeline_version: 0,
        };
        let registry = self.coordinator.registry();
        let (_, changed) = registry.add_environment(record).await?;
        let info = info(&registry.environment(&name)?);
        Ok(Response::new(pb::EnvironmentInfo {
            unchanged: !changed,
            ..info
        }))
    }

    pub(super) async fn apply(
        &self,
        request: Request<pb::ApplyPipelineRequest>,
    ) -> Result<Response<pb::ApplyPipelineResponse>, Status> {
        let who = self
            .allow(&request, "ApplyPipeline", Target::every())
            .await?;
        let r = request.get_ref();
        for (field, endpoint) in crate::pipeline::endpoints(&r.text) {
            self.endpoint_fits_tls(&field, &endpoint)?;
        }
        let actor = who.actor_or("");
        let apply = (r.text.as_str(), r.dry_run, !r.unchecked);
        let applied = self.coordinator.apply_pipeline(apply, &actor).await?;
        Ok(Response::new(pb::ApplyPipelineResponse {
            version: applied.version,
            changes: applied.changes,
            applied: applied.written,
        }))
    }

    pub(super) async fn environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        let who = self
            .allow(&request, "ListEnvironments", Target::every())
            .await?;
        let environments = self
            .coordinator
            .registry()
            .environments()
            .iter()
            .filter(|v| who.reads_in(&v.record.name))
            .map(|v| visible_info(&who, v))
            .collect();
        Ok(Response::new(pb::ListEnvironmentsResponse { environments }))
    }

    pub(super) async fn environment(
        &self,
        request: Request<pb::GetEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentInfo>, Status> {
        let name = Environment::parse("name", &request.get_ref().name)?;
        let who = self
            .allow(&request, "GetEnvironment", Target::environment(&name))
            .await?;
        let view = self.coordinator.registry().environment(&name)?;
        Ok(Response::new(visible_info(&who, &view)))
    }
}

/// `v` as `who` may see it: its readable projects only.
fn visible_info(who: &Principal, v: &EnvironmentView) -> pb::EnvironmentInfo {
    let mut shown = info(v);
    reads::readable_names(who, &v.record.name, &mut shown.projects);
    shown
}

fn info(v: &EnvironmentView) -> pb::EnvironmentInfo {
    let names = |list: &[Environment]| list.iter().map(|e| e.to_string()).collect();
    pb::EnvironmentInfo {
        name: v.record.name.to_string(),
        after: names(&v.record.after),
        before: names(&v.before),
        projects: v.projects.clone(),
        checkpoint: v.checkpoint,
        declared: v.declared,
        created_by: v.record.created_by.clone(),
        unchanged: false,
        stages: v.record.describe(),
        pipeline_version: v.record.pipeline_version,
    }
}
