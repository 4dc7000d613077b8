-- confguard's test callee for a real FreeSWITCH: the phone behind a directory user.
--
-- Runs on the loopback -b leg (the callee) of `originate ... user/<ext>`. It plays out the same
-- behaviours as confguard.sim.callees, read from channel variables: a per-call `sim_<name>`
-- (set in the originate's {}) wins over the user's `sim_default_<name>` (from the directory's
-- dial-string). Names: mode (answer|noanswer|busy|reject|unregistered), answer_after (s),
-- dtmf (<digits>@<s>[;<digits>@<s>...], seconds after answer), hangup_after (s after answer).
-- A per-call `sim_mode=unregistered` can only refuse from this leg (USER_NOT_REGISTERED), after
-- the caller's channel exists; a directory user that is unregistered by default dials
-- `error/user_not_registered` instead (conf.py), which fails with no channel, as SIP does.

local DIGIT_GAP_MS = 100

local function setting(name)
  local value = session:getVariable("sim_" .. name)
  if value == nil or value == "" then
    value = session:getVariable("sim_default_" .. name)
  end
  if value == "" then return nil end
  return value
end

-- Sleep in small steps so a hangup from the other side ends the script promptly.
local function wait_ms(ms)
  local left = ms
  while left > 0 and session:ready() do
    local step = math.min(left, 50)
    freeswitch.msleep(step)
    left = left - step
  end
  return session:ready()
end

local FAILURE = { busy = "USER_BUSY", reject = "CALL_REJECTED", unregistered = "USER_NOT_REGISTERED" }

local mode = setting("mode") or "answer"
if FAILURE[mode] then
  session:hangup(FAILURE[mode])
  return
end
if mode == "noanswer" then
  session:execute("ring_ready")
  while wait_ms(1000) do end
  return
end
if mode ~= "answer" then
  freeswitch.consoleLog("ERR", "confguard callee: unknown sim_mode " .. mode .. "\n")
  session:hangup("UNALLOCATED_NUMBER")
  return
end

-- The timeline after answer: key presses and the hangup, in time order.
local actions = {}
local plan = setting("dtmf") or ""
for entry in string.gmatch(plan, "[^;]+") do
  local digits, at = string.match(entry, "^%s*([0-9*#A-D]+)@([0-9.]+)%s*$")
  if digits then
    for index = 1, #digits do
      table.insert(actions, { at = tonumber(at) * 1000 + (index - 1) * DIGIT_GAP_MS,
                              digit = string.sub(digits, index, index) })
    end
  else
    freeswitch.consoleLog("ERR", "confguard callee: bad sim_dtmf entry " .. entry .. "\n")
  end
end
local hangup_after = setting("hangup_after")
if hangup_after then
  table.insert(actions, { at = tonumber(hangup_after) * 1000, hangup = true })
end
table.sort(actions, function(a, b) return a.at < b.at end)

session:execute("ring_ready")
if not wait_ms(tonumber(setting("answer_after") or "1") * 1000) then return end
session:answer()
local now = 0
for _, action in ipairs(actions) do
  if not wait_ms(action.at - now) then return end
  now = action.at
  if action.hangup then
    session:hangup("NORMAL_CLEARING")
    return
  end
  session:execute("send_dtmf", action.digit)
end
-- Stay on the line (silent) until the other side hangs up.
while wait_ms(1000) do end
