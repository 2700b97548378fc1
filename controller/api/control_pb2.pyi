from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("file", "path", "max_concurrency", "register_timeout")
    FILE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    file: bytes
    path: str
    max_concurrency: int
    register_timeout: float
    def __init__(self, file: _Optional[bytes] = ..., path: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., register_timeout: _Optional[float] = ...) -> None: ...

class ApplyProgress(_message.Message):
    __slots__ = ("applied", "refused", "status")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    applied: Applied
    refused: Refused
    status: DeploymentStatus
    def __init__(self, applied: _Optional[_Union[Applied, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., status: _Optional[_Union[DeploymentStatus, _Mapping]] = ...) -> None: ...

class Applied(_message.Message):
    __slots__ = ("changes", "rollouts")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedScalarFieldContainer[str]
    rollouts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, changes: _Optional[_Iterable[str]] = ..., rollouts: _Optional[_Iterable[str]] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("reason", "fields")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reason: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class DownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownReply(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: int
    def __init__(self, instances: _Optional[int] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("name", "tail", "follow", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tail: int
    follow: bool
    since: float
    def __init__(self, name: _Optional[str] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ..., since: _Optional[float] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("source", "text", "time", "service", "event")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    source: str
    text: str
    time: float
    service: str
    event: bool
    def __init__(self, source: _Optional[str] = ..., text: _Optional[str] = ..., time: _Optional[float] = ..., service: _Optional[str] = ..., event: _Optional[bool] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("name", "backend", "file", "lab", "function", "region", "deployment", "updated_at", "started_at", "running", "coordinator", "connected", "error", "register_timeout", "backend_status", "failures", "partition", "services", "instances", "outputs", "pid", "hosts")
    class ServicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ServiceStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ServiceStatus, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    LAB_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    file: str
    lab: str
    function: str
    region: str
    deployment: str
    updated_at: float
    started_at: float
    running: bool
    coordinator: str
    connected: bool
    error: str
    register_timeout: float
    backend_status: BackendStatus
    failures: _containers.RepeatedCompositeFieldContainer[Failure]
    partition: Partition
    services: _containers.MessageMap[str, ServiceStatus]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    outputs: str
    pid: int
    hosts: LabHosts
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., file: _Optional[str] = ..., lab: _Optional[str] = ..., function: _Optional[str] = ..., region: _Optional[str] = ..., deployment: _Optional[str] = ..., updated_at: _Optional[float] = ..., started_at: _Optional[float] = ..., running: _Optional[bool] = ..., coordinator: _Optional[str] = ..., connected: _Optional[bool] = ..., error: _Optional[str] = ..., register_timeout: _Optional[float] = ..., backend_status: _Optional[_Union[BackendStatus, _Mapping]] = ..., failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., partition: _Optional[_Union[Partition, _Mapping]] = ..., services: _Optional[_Mapping[str, ServiceStatus]] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., outputs: _Optional[str] = ..., pid: _Optional[int] = ..., hosts: _Optional[_Union[LabHosts, _Mapping]] = ...) -> None: ...

class LabHosts(_message.Message):
    __slots__ = ("backend", "lab", "vm_hosts", "function_hosts", "vm_on_public_hosts", "busy")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LAB_FIELD_NUMBER: _ClassVar[int]
    VM_HOSTS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_HOSTS_FIELD_NUMBER: _ClassVar[int]
    VM_ON_PUBLIC_HOSTS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    backend: str
    lab: str
    vm_hosts: int
    function_hosts: int
    vm_on_public_hosts: bool
    busy: int
    def __init__(self, backend: _Optional[str] = ..., lab: _Optional[str] = ..., vm_hosts: _Optional[int] = ..., function_hosts: _Optional[int] = ..., vm_on_public_hosts: _Optional[bool] = ..., busy: _Optional[int] = ...) -> None: ...

class BackendStatus(_message.Message):
    __slots__ = ("backend", "function", "region", "concurrency", "throttled_total", "vm")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    backend: str
    function: str
    region: str
    concurrency: Concurrency
    throttled_total: int
    vm: VmTierStatus
    def __init__(self, backend: _Optional[str] = ..., function: _Optional[str] = ..., region: _Optional[str] = ..., concurrency: _Optional[_Union[Concurrency, _Mapping]] = ..., throttled_total: _Optional[int] = ..., vm: _Optional[_Union[VmTierStatus, _Mapping]] = ...) -> None: ...

class VmTierStatus(_message.Message):
    __slots__ = ("hosts", "reachable", "slots", "in_use", "launched_total")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    LAUNCHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    hosts: int
    reachable: int
    slots: int
    in_use: int
    launched_total: int
    def __init__(self, hosts: _Optional[int] = ..., reachable: _Optional[int] = ..., slots: _Optional[int] = ..., in_use: _Optional[int] = ..., launched_total: _Optional[int] = ...) -> None: ...

class Concurrency(_message.Message):
    __slots__ = ("limit", "in_use", "waiting")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    limit: int
    in_use: int
    waiting: int
    def __init__(self, limit: _Optional[int] = ..., in_use: _Optional[int] = ..., waiting: _Optional[int] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("at", "name", "service", "instance_id", "reason", "exit_status", "last_log", "restarts", "retry_in", "then")
    AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_FIELD_NUMBER: _ClassVar[int]
    THEN_FIELD_NUMBER: _ClassVar[int]
    at: float
    name: str
    service: str
    instance_id: str
    reason: str
    exit_status: int
    last_log: _containers.RepeatedScalarFieldContainer[str]
    restarts: int
    retry_in: float
    then: str
    def __init__(self, at: _Optional[float] = ..., name: _Optional[str] = ..., service: _Optional[str] = ..., instance_id: _Optional[str] = ..., reason: _Optional[str] = ..., exit_status: _Optional[int] = ..., last_log: _Optional[_Iterable[str]] = ..., restarts: _Optional[int] = ..., retry_in: _Optional[float] = ..., then: _Optional[str] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("mode", "quiet", "held", "lost", "instances", "reason")
    MODE_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    mode: str
    quiet: int
    held: int
    lost: int
    instances: int
    reason: str
    def __init__(self, mode: _Optional[str] = ..., quiet: _Optional[int] = ..., held: _Optional[int] = ..., lost: _Optional[int] = ..., instances: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("placement", "min", "max", "desired", "address", "load", "pending", "revision", "outdated", "autoscale")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OUTDATED_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_FIELD_NUMBER: _ClassVar[int]
    placement: str
    min: int
    max: int
    desired: int
    address: str
    load: float
    pending: bool
    revision: int
    outdated: int
    autoscale: Autoscale
    def __init__(self, placement: _Optional[str] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., desired: _Optional[int] = ..., address: _Optional[str] = ..., load: _Optional[float] = ..., pending: _Optional[bool] = ..., revision: _Optional[int] = ..., outdated: _Optional[int] = ..., autoscale: _Optional[_Union[Autoscale, _Mapping]] = ...) -> None: ...

class Autoscale(_message.Message):
    __slots__ = ("metric", "target")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    metric: str
    target: float
    def __init__(self, metric: _Optional[str] = ..., target: _Optional[float] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("service", "name", "id", "instance_id", "state", "placement", "address", "host", "pid", "connections", "cpu", "rss", "listening", "direct", "relayed", "accepted", "started_at", "age", "ready_after", "lifetime_left", "exit_status", "error", "revision", "restarts", "next_try", "next_try_in", "last_log", "registered_after")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    READY_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TRY_FIELD_NUMBER: _ClassVar[int]
    NEXT_TRY_IN_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AFTER_FIELD_NUMBER: _ClassVar[int]
    service: str
    name: str
    id: str
    instance_id: str
    state: str
    placement: str
    address: str
    host: str
    pid: int
    connections: int
    cpu: float
    rss: int
    listening: _containers.RepeatedScalarFieldContainer[int]
    direct: int
    relayed: int
    accepted: int
    started_at: float
    age: float
    ready_after: float
    lifetime_left: float
    exit_status: int
    error: str
    revision: int
    restarts: int
    next_try: float
    next_try_in: float
    last_log: _containers.RepeatedScalarFieldContainer[str]
    registered_after: float
    def __init__(self, service: _Optional[str] = ..., name: _Optional[str] = ..., id: _Optional[str] = ..., instance_id: _Optional[str] = ..., state: _Optional[str] = ..., placement: _Optional[str] = ..., address: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., connections: _Optional[int] = ..., cpu: _Optional[float] = ..., rss: _Optional[int] = ..., listening: _Optional[_Iterable[int]] = ..., direct: _Optional[int] = ..., relayed: _Optional[int] = ..., accepted: _Optional[int] = ..., started_at: _Optional[float] = ..., age: _Optional[float] = ..., ready_after: _Optional[float] = ..., lifetime_left: _Optional[float] = ..., exit_status: _Optional[int] = ..., error: _Optional[str] = ..., revision: _Optional[int] = ..., restarts: _Optional[int] = ..., next_try: _Optional[float] = ..., next_try_in: _Optional[float] = ..., last_log: _Optional[_Iterable[str]] = ..., registered_after: _Optional[float] = ...) -> None: ...

class UpRequest(_message.Message):
    __slots__ = ("file", "path", "folder", "name", "backend", "register_timeout")
    FILE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    file: bytes
    path: str
    folder: str
    name: str
    backend: str
    register_timeout: float
    def __init__(self, file: _Optional[bytes] = ..., path: _Optional[str] = ..., folder: _Optional[str] = ..., name: _Optional[str] = ..., backend: _Optional[str] = ..., register_timeout: _Optional[float] = ...) -> None: ...
