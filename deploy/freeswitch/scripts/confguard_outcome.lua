-- confguard_outcome.lua: announce an invite's outcome to its conference room.
--
-- Runs for every CUSTOM confguard::outcome event (lua.conf.xml's hook); `event` is that event.
-- Headers: invite_id, uuid, ext, room, outcome (joined, timeout, declined, busy, no_answer, ...,
-- or refused), cause, request_id (what the invite event gave), source (event | api).
-- A joined invitee hears its own entry; everyone in the room hears a short rising tone for
-- joined, a falling one for anything else. Replace the tones with recordings, or `say:` text.

local room = event:getHeader("room") or ""
local outcome = event:getHeader("outcome") or ""
local ext = event:getHeader("ext") or "?"

-- The room is used in an API command: take only a plain conference name (no @profile).
local name = room:match("^([%w_-]+)")
if name == nil or not outcome:match("^[%a_]+$") then
  return
end

local tone
if outcome == "joined" then
  tone = "tone_stream://%(150,50,660);%(150,50,880)"
else
  tone = "tone_stream://%(150,50,880);%(150,50,660)"
end
local api = freeswitch.API()
local reply = api:execute("conference", name .. " play " .. tone)
freeswitch.consoleLog("NOTICE", "confguard outcome: " .. ext .. " " .. outcome .. " in " .. name
  .. " (" .. tostring(reply):gsub("%s+$", "") .. ")\n")
