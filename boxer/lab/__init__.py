"""The lab: Lambda's network (hosts behind real NAT routers) on one machine.

    lab = lab_up("demo", hosts=2)          # namespaces, NAT routers, coordinator
    lab.run("h1", ["curl", ...])           # run something inside host h1
    lab_down("demo")                       # remove everything, also after a crash
"""

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
from boxer.lab._plan import COORDINATOR_HOST, LabHost, LabPlan, host_plan, lab_plan
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
    "NotRootError",
    "default_coordinator_cmd",
    "host_plan",
    "lab_down",
    "lab_down_all",
    "lab_plan",
    "lab_up",
    "list_labs",
    "load_lab",
]
