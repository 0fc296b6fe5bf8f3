"""The TRACE method, independent of any task: rollout trees and their growth against an `Environment`
protocol, the two allocation stages, the success predictors, the advantages and the policy loss, and
the oracle ledger. Nothing here imports a task family (`trace_core.search_agent`) or the simulation."""
