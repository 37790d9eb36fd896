from tests.bot.conftest import *  # noqa
from tests.bot.conftest import ALICE, ADMIN
from gpubot.services.commands import handle_command, handle_action
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow

def test_probe(deps):
    r = handle_command(deps, "train lr=2e-5", user=ALICE, channel="C1", request_key="k1")
    jid = r.job_id
    for v in ["NaN", "sNaN", "Infinity", "-Infinity", "1e999999", "1e-999999", "0.0000001", "1E+50"]:
        try:
            rep = handle_action(deps, "job.extend_budget", f"{jid}:{v}", user=ALICE, channel="C1")
            print(v, "->", rep.ok, rep.text)
        except Exception as e:
            print(v, "RAISED", type(e).__name__, e)
        with session_scope(deps.sessions) as s:
            print("   budget", s.get(JobRow, jid).budget_usd)
    for v in ["nan", "inf", "1e400", "-5"]:
        rep = handle_action(deps, "job.keep", f"{jid}:{v}", user=ALICE, channel="C1")
        print("keep", v, rep.text)
