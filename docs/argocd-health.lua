-- Argo CD health check of orchestrator.dev/OrchestratorCluster (resource.customizations.health).
-- Healthy: the operator has observed the current spec and every wanted server has joined.
-- Progressing: the spec is not observed yet, or servers are being added, removed or replaced.
-- Suspended: a change waits for maintenance.paused, a maintenance window or an approval.
-- Degraded: a person must act (database unusable, a halted roll, an unusable spec, servers down,
-- an HPA beside capacity.autoscale).
local hs = {}
local function condition(kind)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end
local function holds(kind)
  local c = condition(kind)
  return c ~= nil and c.status == "True"
end
local function message(kind, fallback)
  local c = condition(kind)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration < (obj.metadata.generation or 0) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local database = condition("DatabaseReady")
if database ~= nil and database.status == "False" then
  hs.status = "Degraded"
  hs.message = message("DatabaseReady", "The database cannot be used")
  return hs
end

local maintenance = condition("MaintenanceBlocked")
if maintenance ~= nil and maintenance.status == "True" then
  if maintenance.reason == "Paused" or maintenance.reason == "OutsideWindow"
      or maintenance.reason == "AwaitingApproval" then
    hs.status = "Suspended"
    hs.message = message("MaintenanceBlocked", maintenance.reason)
    return hs
  end
  local halted = {DrainTimeout = true, ReadyTimeout = true, SchemaChangeRefused = true,
                  SchemaCheckFailed = true, SchemaMigrationFailed = true}
  if halted[maintenance.reason] then
    hs.status = "Degraded"
    hs.message = message("MaintenanceBlocked", maintenance.reason)
    return hs
  end
end

local capacity = condition("CapacityBlocked")
if capacity ~= nil and capacity.status == "True" and capacity.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = message("CapacityBlocked", capacity.reason)
  return hs
end
if capacity ~= nil and capacity.status == "True"
    and (capacity.reason == "AboveMaxReplicas" or capacity.reason == "DrainTimeout"
         or capacity.reason == "AutoscalerConflict") then
  hs.status = "Degraded"
  hs.message = message("CapacityBlocked", capacity.reason)
  return hs
end

if holds("Degraded") then
  hs.status = "Degraded"
  hs.message = message("Degraded", "Servers are unhealthy")
  return hs
end

if holds("Ready") then
  hs.status = "Healthy"
  hs.message = message("Ready", "All servers joined")
  return hs
end

hs.status = "Progressing"
hs.message = message("Progressing", message("Ready", "Phase " .. tostring(obj.status.phase)))
return hs
