"""The OpenADR XML the gateway reads, as the VEN (a VTN's answers) and as the demo VTN (a VEN's requests), and the
escaping of what it writes.

No OpenADR message carries a DTD, and openleadr's parser (schema-validating while it substitutes entities)
crashes the process with SIGSEGV under lxml 6.0 / libxml2 2.14 at the first entity a DTD declares: one
<!ENTITY> in a VTN's answer, from the VTN or anyone on the path of a plain http vtn_url, killed the gateway
and its BACnet device; one in a request to the demo VTN killed `edge-gateway demo` or `demo-vtn`.
Entities are left unexpanded and nothing is fetched; a message with a DTD is refused before the schema is applied.
"""
from __future__ import annotations

from jinja2 import ChoiceLoader, DictLoader
from lxml import etree
from lxml.etree import DocumentInvalid
from openleadr import messaging
from openleadr.messaging import XML_SCHEMA

# openleadr renders every message with a jinja2 environment that does not escape (its envelope marks the signed
# object and the signature `|safe`, ready for one that does): an eventID "CPP&DR-1", schema-valid as the VTN sent it,
# came back in a malformed oadrCreatedEvent, refused at every poll, and the utility never heard optIn or optOut; a
# ven_name "Smith & Sons" never registered; and a VTN's id could put markup into a message the VEN signs. Set before
# any message is made (this module is imported by both sides)
messaging.TEMPLATES.autoescape = True

# Where openleadr's templates write what 2.0b does not, each as (template, its text, what it becomes):
_FLOAT = """            <ei:payloadFloat>
              <ei:value>{{ interval.report_payload.value }}</ei:value>
            </ei:payloadFloat>
"""
_ADDRESS = "    <oadr:oadrTransportAddress>{{ transport_address }}</oadr:oadrTransportAddress>\n"
_END = "  </oadr:oadrRegisterReport>"
_PATCHES = (
    # oadrRegisterReport's own reportRequestID (the schema's last element), which the template lacks: a VEN
    # registering its reports in answer to a VTN's METADATA request names that request there (the certification
    # tool checks it), and leaves it out when it registers of its own accord (openleadr passes 0 then)
    ("oadrRegisterReport.xml", _END,
     "    {% if report_request_id is defined and report_request_id is not none and report_request_id != 0 %}\n"
     "    <ei:reportRequestID>{{ report_request_id }}</ei:reportRequestID>\n"
     "    {% endif %}\n" + _END),
    # oadrUpdateReport's payload: openleadr writes every one as payloadFloat, and a TELEMETRY_STATUS interval is an
    # oadrPayloadResourceStatus, in the same place of the schema (ei:payloadBase). A payload carrying `status` (a
    # ven.vtn_status.ResourceStatus) is written so; any other as before
    ("oadrUpdateReport.xml", _FLOAT, """            {% set status = interval.report_payload.status %}
            {% if status is defined and status is not none %}
            <oadr:oadrPayloadResourceStatus>
              <oadr:oadrOnline>{{ status.online|booleanformat }}</oadr:oadrOnline>
              <oadr:oadrManualOverride>{{ status.manual_override|booleanformat }}</oadr:oadrManualOverride>
              <oadr:oadrLoadControlState>
                <oadr:oadrLevelOffset>
                  <oadr:oadrMin>{{ status.level_min }}</oadr:oadrMin>
                  <oadr:oadrMax>{{ status.level_max }}</oadr:oadrMax>
                  <oadr:oadrCurrent>{{ status.level }}</oadr:oadrCurrent>
                  <oadr:oadrNormal>{{ status.level_normal }}</oadr:oadrNormal>
                </oadr:oadrLevelOffset>
              </oadr:oadrLoadControlState>
            </oadr:oadrPayloadResourceStatus>
            {% else %}
""" + _FLOAT + """            {% endif %}
"""),
    # oadrCreatePartyRegistration's oadrTransportAddress, "not required if http pull model" (the schema): openleadr
    # writes it empty, and left out is what the VEN means (helper conformance40)
    ("oadrCreatePartyRegistration.xml", _ADDRESS, "    {% if transport_address %}\n" + _ADDRESS + "    {% endif %}\n"),
)


def _patched(name: str, old: str, new: str) -> str:
    source = messaging.TEMPLATES.loader.get_source(messaging.TEMPLATES, name)[0]
    if source.count(old) != 1:
        raise ImportError(f"openleadr's {name} is not the one ven/oadr_xml.py patches: see its comments")
    return source.replace(old, new)


messaging.TEMPLATES.loader = ChoiceLoader([DictLoader({name: _patched(name, old, new) for name, old, new in _PATCHES}),
                                          messaging.TEMPLATES.loader])
# any template compiled before this module was imported is compiled again, escaping and patched
if messaging.TEMPLATES.cache is not None:
    messaging.TEMPLATES.cache.clear()


def validate_xml_schema(content: bytes):
    """openleadr's validate_xml_schema, refusing a DTD: the message's tree, schema-valid. Raises XMLSyntaxError
    or DocumentInvalid. A parser per message: messages are parsed in worker threads at once."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    tree = etree.fromstring(content, parser)
    if tree.getroottree().docinfo.internalDTD is not None or tree.getroottree().docinfo.doctype:
        raise DocumentInvalid("the message carries a DTD (<!DOCTYPE>), which OpenADR messages never do")
    XML_SCHEMA.assertValid(tree)
    return tree
