//! The object kinds fngate reads, exactly as they appear in Kubernetes: OpenFunction
//! `Function` (v1beta2, with v1beta1 converted), OpenFunction `Gateway`,
//! `discovery.k8s.io/v1` `EndpointSlice`, Dapr `Component` and `Configuration`, and `v1` `Secret`. Parsing here is structural only; defaults and
//! validation belong to `compile`.

mod component;
mod configuration;
mod diagnostic;
mod duration;
mod endpointslice;
mod function;
mod gateway;
mod httproute;
mod meta;
mod parse;

pub use component::{Component, ComponentSpec, MetadataItem, Secret, SecretKeyRef};
pub use configuration::{
    AccessControlSpec, AppOperation, AppPolicy, Configuration, ConfigurationSpec, SecretsScope,
    SecretsSpec,
};
pub use diagnostic::{Diagnostic, Severity};
pub use duration::parse_duration;
pub use endpointslice::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
pub use function::{
    DaprIo, DaprTrigger, Function, FunctionOutput, FunctionSpec, FunctionStatus, HttpTrigger,
    ServingSpec, ServingStatus, StateEntry, StateStore, TriggerInput, Triggers,
};
pub use gateway::{Gateway, GatewayListener, GatewayListeners, GatewaySpec};
pub use httproute::{
    BackendRef, Filter, HeaderMatch, HeaderModifier, HeaderValue, ParentRef, PathMatch,
    PathModifier, QueryMatch, RequestMirror, RequestRedirect, RouteMatch, RouteRule, RouteSpec,
    RuleTimeouts, UrlRewrite,
};
pub use meta::{ObjectKey, ObjectKind, ObjectMeta, SortedMap, StringMap};
pub use parse::{parse_documents, parse_object, ParsedDocument, ParsedObject};
