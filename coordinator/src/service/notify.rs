//! The webhook subscription calls. Their rows of `access::table` make each a call over
//! the whole of the subscription's environment, or of everything (a subscription sees
//! every project's events): a grant scoped to some projects allows none of them.

use lockstep::{names::Environment, pb};
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::access::table::Target;

impl CoordinatorService {
    pub(super) async fn subscribe(
        &self,
        request: Request<pb::AddSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let r = request.get_ref();
        let env = (!r.environment.is_empty())
            .then(|| Environment::parse("environment", &r.environment))
            .transpose()?;
        let who = self
            .allow(&request, "AddSubscription", Target::optional(env.as_ref()))
            .await?;
        let notifier = self.coordinator.notifier();
        Ok(Response::new(
            notifier.add(request.get_ref(), &who.actor_or("")).await?,
        ))
    }

    pub(super) async fn subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        self.allow(&request, "ListSubscriptions", Target::every())
            .await?;
        let subscriptions = self.coordinator.notifier().list();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    pub(super) async fn unsubscribe(
        &self,
        request: Request<pb::RemoveSubscriptionRequest>,
    ) -> Result<Response<pb::RemoveSubscriptionResponse>, Status> {
        let who = self
            .allow(&request, "RemoveSubscription", Target::every())
            .await?;
        let name = &request.get_ref().name;
        let removed = self
            .coordinator
            .notifier()
            .remove(name, &who.actor_or(""))
            .await?;
        Ok(Response::new(pb::RemoveSubscriptionResponse {
            subscription: Some(removed),
        }))
    }

    pub(super) async fn ping(
        &self,
        request: Request<pb::TestSubscriptionRequest>,
    ) -> Result<Response<pb::TestSubscriptionResponse>, Status> {
        self.allow(&request, "TestSubscription", Target::every())
            .await?;
        let name = &request.get_ref().name;
        Ok(Response::new(self.coordinator.notifier().ping(name).await?))
    }
}
