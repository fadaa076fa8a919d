//! The webhook subscription calls: adding, removing and pinging need `operate` over the
//! whole of the subscription's environment (or of every one: a subscription sees every
//! project's events), listing needs `read` over everything, since a subscription sees
//! the log of every environment it is not filtered to. A grant scoped to some projects
//! allows none of them.

use lockstep::{names::Environment, pb};
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::access::roles::{Permission, Scope};

impl CoordinatorService {
    pub(super) async fn subscribe(
        &self,
        request: Request<pb::AddSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let r = request.get_ref();
        let scope = match r.environment.is_empty() {
            true => Scope::whole(None),
            false => Scope::whole(Some(&Environment::parse("environment", &r.environment)?)),
        };
        let who = self
            .allow(&request, "AddSubscription", Permission::Operate, scope)
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
        self.allow(
            &request,
            "ListSubscriptions",
            Permission::Read,
            Scope::whole(None),
        )
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
        let call = "RemoveSubscription";
        let who = self
            .allow(&request, call, Permission::Operate, Scope::whole(None))
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
        let call = "TestSubscription";
        self.allow(&request, call, Permission::Operate, Scope::whole(None))
            .await?;
        let name = &request.get_ref().name;
        Ok(Response::new(self.coordinator.notifier().ping(name).await?))
    }
}
