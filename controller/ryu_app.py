"""Thin Ryu OpenFlow 1.3 app: OpenFlow events -> FabricLogic, FabricLogic rules -> flow mods, REST.

Configuration comes from the JSON file named by the NETKV_CONTROLLER_CONFIG environment variable
(written by the network runner): topology parameters, routing strategy, bandwidth_scale,
poll_interval (s, wall clock), publish_delay (s). Start it through controller/launcher.py.

REST API (JSON, bound to 127.0.0.1 by the launcher; see docs/controller-api.md):
  GET /netkv/health                       switches connected, routes installed, polls
  GET /netkv/links[?history=1]            per directed link: capacity, rate, utilisation, sampled_at, up
  GET /netkv/path?src=H&dst=H             switches and bottleneck residual of the routed path
  GET /netkv/cost?src=H&dst=H&bytes=N     seconds to move N (emulated) bytes now, and telemetry age
"""

from __future__ import annotations

import json
import os
import time

from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.lib.packet import arp, ethernet, packet
from ryu.ofproto import ofproto_v1_3

from netkv.controller.logic import CONTROLLER, FabricLogic, Rule

APP_KEY = "netkv_logic"


class NetKVController(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("NETKV_CONTROLLER_CONFIG")
        if not path:
            raise RuntimeError("NETKV_CONTROLLER_CONFIG is not set (start through netkv.controller.launcher)")
        with open(path) as fh:
            cfg = json.load(fh)
        self.cfg = cfg
        self.logic = FabricLogic.from_config(cfg)
        self.poll_interval = float(cfg.get("poll_interval", 1.0))
        self.datapaths = {}
        kwargs["wsgi"].register(RestApi, {APP_KEY: self.logic})
        self._poller = hub.spawn(self._poll_loop)

    # ---- switch lifecycle --------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        dp = ev.msg.datapath
        try:
            rules = self.logic.rules(dp.id)
        except KeyError:
            self.logger.warning("switch %016x is not part of the fabric; ignored", dp.id)
            return
        self.datapaths[dp.id] = dp
        self.logic.connected.add(dp.id)
        for r in rules:
            self._flow_mod(dp, r)
        dp.send_msg(dp.ofproto_parser.OFPBarrierRequest(dp))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        self.logic.installed.add(ev.msg.datapath.id)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state(self, ev):
        dp = ev.datapath
        # a switch that reconnects may say hello again before its old connection is seen dead:
        # forget it only if the dead connection is the one in use
        if ev.state == DEAD_DISPATCHER and dp.id is not None and self.datapaths.get(dp.id) is dp:
            self.datapaths.pop(dp.id)
            self.logic.connected.discard(dp.id)
            self.logic.installed.discard(dp.id)

    def _flow_mod(self, dp, rule: Rule):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        match = parser.OFPMatch(**rule.match_dict)
        if rule.deletes:  # a pair rule no longer needed
            dp.send_msg(
                parser.OFPFlowMod(
                    dp,
                    table_id=rule.table,
                    command=ofp.OFPFC_DELETE_STRICT,
                    priority=rule.priority,
                    match=match,
                    out_port=ofp.OFPP_ANY,
                    out_group=ofp.OFPG_ANY,
                )
            )
            return
        inst = []  # no instruction: drop
        if rule.meta is not None:
            inst.append(parser.OFPInstructionWriteMetadata(*rule.meta))
        if rule.goto is not None:
            inst.append(parser.OFPInstructionGotoTable(rule.goto))
        elif rule.out is not None:
            port = ofp.OFPP_CONTROLLER if rule.out == CONTROLLER else rule.out
            actions = [parser.OFPActionOutput(port, ofp.OFPCML_NO_BUFFER)]
            inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
        dp.send_msg(parser.OFPFlowMod(dp, table_id=rule.table, priority=rule.priority, match=match, instructions=inst))

    # ---- telemetry ---------------------------------------------------------------------------
    def _poll_loop(self):
        while True:
            start = time.monotonic()
            for dp in list(self.datapaths.values()):
                parser = dp.ofproto_parser
                dp.send_msg(parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))
            self.logic.polls += 1
            hub.sleep(max(0.0, self.poll_interval - (time.monotonic() - start)))

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev):
        now = time.time()
        stats = []
        for s in ev.msg.body:
            if s.port_no > 0xFFFFFF00:  # LOCAL and other reserved ports
                continue
            dur = None if s.duration_sec == 0xFFFFFFFF else s.duration_sec + s.duration_nsec * 1e-9
            stats.append((s.port_no, s.rx_bytes, s.tx_bytes, dur))
        self.logic.on_port_stats(ev.msg.datapath.id, stats, now)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        ofp = msg.datapath.ofproto
        desc = msg.desc
        up = not (desc.state & ofp.OFPPS_LINK_DOWN) and not (desc.config & ofp.OFPPC_PORT_DOWN)
        if msg.reason == ofp.OFPPR_DELETE:
            up = False
        changes = self.logic.on_port_status(msg.datapath.id, desc.port_no, up)
        t = time.time()
        for r in changes:
            dp = self.datapaths.get(r.dpid)
            if dp is not None:
                self._flow_mod(dp, r)
        if changes:
            self.logger.info(
                "%.3f port %s of %016x %s: rewrote %d pair rules in %.1f ms",
                t,
                desc.port_no,
                msg.datapath.id,
                "up" if up else "down",
                len(changes),
                (time.time() - t) * 1e3,
            )

    # ---- ARP ---------------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        pkt = packet.Packet(msg.data)
        a = pkt.get_protocol(arp.arp)
        if a is None or a.opcode != arp.ARP_REQUEST:
            return
        mac = self.logic.arp_mac(a.dst_ip)
        if mac is None:
            return
        dp = msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        reply = packet.Packet()
        reply.add_protocol(ethernet.ethernet(ethertype=0x0806, dst=a.src_mac, src=mac))
        reply.add_protocol(
            arp.arp(opcode=arp.ARP_REPLY, src_mac=mac, src_ip=a.dst_ip, dst_mac=a.src_mac, dst_ip=a.src_ip)
        )
        reply.serialize()
        in_port = msg.match["in_port"]
        dp.send_msg(
            parser.OFPPacketOut(
                dp,
                buffer_id=ofp.OFP_NO_BUFFER,
                in_port=ofp.OFPP_CONTROLLER,
                actions=[parser.OFPActionOutput(in_port)],
                data=reply.data,
            )
        )


def _json(obj, status=200):
    return Response(status=status, content_type="application/json", charset="utf-8", body=json.dumps(obj).encode())


def _error(e: Exception):
    """400 for a malformed request (ValueError), 404 for an unknown host (KeyError); the message as
    raised (a KeyError's str() would add quotes)."""
    return _json({"error": str(e.args[0]) if e.args else type(e).__name__}, 400 if isinstance(e, ValueError) else 404)


def _not_routed(req):
    """Anything the routes above did not take: an unknown path is a 404, another method than GET a
    405 (not Ryu's HTML 404 page); both JSON like every other error."""
    if req.method in ("GET", "HEAD"):
        return _json({"error": f"no such route: {req.path}"}, 404)
    resp = _json({"error": f"method {req.method} not allowed (the API is GET only)"}, 405)
    resp.headers["Allow"] = "GET, HEAD"
    return resp


class RestApi(ControllerBase):
    def __init__(self, req, link, data, **config):
        super().__init__(req, link, data, **config)
        self.logic: FabricLogic = data[APP_KEY]

    @route("netkv", "/netkv/health", methods=["GET"])
    def health(self, req, **_):
        return _json(self.logic.health_view())

    @route("netkv", "/netkv/links", methods=["GET"])
    def links(self, req, **_):
        h = req.GET.get("history")
        if h not in (None, "0", "1", "false", "true"):
            return _error(ValueError(f"history must be 0, 1, false or true, got '{h}'"))
        return _json(self.logic.links_view(history=h in ("1", "true")))

    @route("netkv", "/netkv/path", methods=["GET"])
    def path(self, req, **_):
        try:
            return _json(self.logic.path_view(_param(req, "src"), _param(req, "dst")))
        except (KeyError, ValueError) as e:
            return _error(e)

    @route("netkv", "/netkv/cost", methods=["GET"])
    def cost(self, req, **_):
        try:
            raw = _param(req, "bytes")
            try:
                nbytes = float(raw)
            except ValueError:
                raise ValueError(f"bytes must be a number, got '{raw}'") from None
            return _json(self.logic.cost_view(_param(req, "src"), _param(req, "dst"), nbytes))
        except (KeyError, ValueError) as e:
            return _error(e)

    # must be registered last so that the routes above match first: Ryu registers a controller's
    # routes in the alphabetical order of their method names (inspect.getmembers), hence "zz_"
    @route("netkv", "/netkv/{name}")
    def zz_not_routed(self, req, **_):
        return _not_routed(req)


def _param(req, name):
    v = req.GET.get(name)
    if v is None or v == "":
        raise ValueError(f"missing query parameter '{name}'")
    return v
