-- Argo CD health check for modeldeploy.dev/ModelDeployment.
--
-- Reads the kstatus conditions the operator writes (Ready always; Reconciling and
-- Stalled only while True). Stalled and Reconciling decide before Ready, as in kstatus;
-- Ready then tells a serving deployment from a failing or waiting one.
-- Argo CD runs custom checks without its open libraries: only base and table
-- functions are used here (no string.format, no string methods).

local hs = {}

local function findCondition(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

-- An empty message would leave the Argo CD UI blank; the reason still says something.
local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil then
    return c.reason
  end
  return ""
end

-- Pod failures that do not clear on their own.
local failureReasons = {
  ImagePullBackOff = true,
  CrashLoopBackOff = true,
  OOMKilled = true,
}

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

-- Conditions written for an older spec say nothing about the current one.
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to observe the resource"
  end
  return hs
end

local stalled = findCondition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = findCondition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

local ready = findCondition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if ready.status == "False" then
  if failureReasons[ready.reason] then
    hs.status = "Degraded"
  elseif ready.reason == "Unschedulable" then
    -- Waiting for a GPU is not a failure: the cluster autoscaler may add a node.
    -- A wait that outlasts the progress deadline is reported as Stalled instead.
    hs.status = "Progressing"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(ready)
  return hs
end

-- Ready Unknown: the operator could not tell yet.
hs.status = "Progressing"
hs.message = describe(ready)
return hs
