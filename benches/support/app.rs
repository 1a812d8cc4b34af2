//! The trivial Dapr gRPC app the event benchmarks deliver to: it hands each event's payload
//! to a sink and answers success.

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use dapr::dapr::proto::runtime::v1::app_callback_server::{AppCallback, AppCallbackServer};
use dapr::dapr::proto::runtime::v1::*;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Where the app puts what arrives.
pub trait EventSink: Send + Sync + 'static {
    fn hit(&self, data: &[u8]);
}

/// Subscribes to `topic` of pub/sub `ps` and reads input binding `kin`; `bulk` subscribes with Dapr's
/// bulk subscribe (`BULK_MAX` messages, 1 s await).
pub struct GrpcApp<S> {
    sink: Arc<S>,
    topic: String,
    bulk: bool,
}

/// `maxMessagesCount` of the bulk-subscribing apps (Dapr's default).
pub const BULK_MAX: i32 = 100;

#[tonic::async_trait]
impl<S: EventSink> AppCallback for GrpcApp<S> {
    async fn on_invoke(
        &self,
        _: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions: vec![TopicSubscription {
                pubsub_name: "ps".into(),
                topic: self.topic.clone(),
                bulk_subscribe: self.bulk.then_some(BulkSubscribeConfig {
                    enabled: true,
                    max_messages_count: BULK_MAX,
                    max_await_duration_ms: 1000,
                }),
                ..Default::default()
            }],
        }))
    }
    async fn on_topic_event(
        &self,
        r: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        self.sink.hit(&r.get_ref().data);
        Ok(Response::new(TopicEventResponse { status: 0 }))
    }
    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListInputBindingsResponse>, Status> {
        Ok(Response::new(ListInputBindingsResponse {
            bindings: vec!["kin".into()],
        }))
    }
    async fn on_binding_event(
        &self,
        r: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        self.sink.hit(&r.get_ref().data);
        Ok(Response::new(BindingEventResponse::default()))
    }
    async fn on_bulk_topic_event(
        &self,
        r: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        let statuses = r
            .into_inner()
            .entries
            .into_iter()
            .map(|e| {
                if let Some(topic_event_bulk_request_entry::Event::CloudEvent(ce)) = &e.event {
                    self.sink.hit(&ce.data);
                }
                TopicEventBulkResponseEntry {
                    entry_id: e.entry_id,
                    status: 0,
                }
            })
            .collect();
        Ok(Response::new(TopicEventBulkResponse { statuses }))
    }
    async fn on_job_event(
        &self,
        _: Request<JobEventRequest>,
    ) -> Result<Response<JobEventResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

pub async fn serve_grpc<S: EventSink>(sink: Arc<S>, topic: String, bulk: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(GrpcApp { sink, topic, bulk }))
            .serve_with_incoming(incoming),
    );
    addr
}
