"""The function-calling task family: BFCL v4 multi-turn episodes over executable, branchable APIs."""
