"""The lab: Lambda's network (hosts behind real NAT routers) on one machine.

    lab = lab_up("demo", hosts=2)          # namespaces, NAT routers, coordinator
    lab = lab_up("bad", hosts=2, nat="eim,h2=symmetric", rtt=20, loss=2, public=1,
                 mapping_timeout=30)      # the hostile variants (docs/lab.md)
    lab.run("h1", ["curl", ...])           # run something inside host h1
    lab_down("demo")                       # remove everything, also after a crash
"""

from boxer.lab._conditions import NAT_EIM, NAT_SYMMETRIC, NAT_TYPES, LinkConditions, parse_nat
from boxer.lab._lab import (
    COORDINATOR_CMD_ENV,
    DownReport,
    Lab,
    LabProcess,
    default_coordinator_cmd,
    lab_down,
    lab_down_all,
    lab_up,
    list_labs,
    load_lab,
)
from boxer.lab._plan import (
    COORDINATOR_HOST,
    LabHost,
    LabPlan,
    PublicHost,
    host_plan,
    lab_plan,
    public_host_plan,
)
from boxer.lab._process import stop_processes
from boxer.lab.errors import (
    CoordinatorStartError,
    LabError,
    LabExistsError,
    LabNotFoundError,
    LabSetupError,
    LabUsageError,
    NotRootError,
)

__all__ = [
    "COORDINATOR_CMD_ENV",
    "COORDINATOR_HOST",
    "NAT_EIM",
    "NAT_SYMMETRIC",
    "NAT_TYPES",
    "CoordinatorStartError",
    "DownReport",
    "Lab",
    "LabError",
    "LabExistsError",
    "LabHost",
    "LabNotFoundError",
    "LabPlan",
    "LabProcess",
    "LabSetupError",
    "LabUsageError",
    "LinkConditions",
    "NotRootError",
    "PublicHost",
    "default_coordinator_cmd",
    "host_plan",
    "lab_down",
    "lab_down_all",
    "lab_plan",
    "lab_up",
    "list_labs",
    "load_lab",
    "parse_nat",
    "public_host_plan",
    "stop_processes",
]
