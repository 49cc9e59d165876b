"""An invoice as a PDF, drawn with fpdf2 (pure Python: no system packages)."""

from __future__ import annotations

from fpdf import FPDF

from billing.models import Invoice, InvoiceLine


def _latin1(text: str) -> str:
    """The core PDF fonts speak Latin-1; anything else becomes '?' rather than an error."""
    return text.encode("latin-1", "replace").decode("latin-1")


def invoice_pdf(invoice: Invoice, lines: list[InvoiceLine]) -> bytes:
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_title(f"Tesseract invoice {invoice.number}")
    pdf.set_creator("Tesseract")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(f"Invoice {invoice.number}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    header = (
        f"{invoice.org.name} - {invoice.tier.name} tier - period "
        f"{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} (UTC, end exclusive)"
        f" - {invoice.get_status_display()}"
    )
    pdf.cell(0, 7, _latin1(header), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    widths = (107, 22, 30, 30, 28, 28, 32)
    heads = ("Line", "Requests", "Input tokens", "Output tokens", "$/1M in", "$/1M out", "Amount")
    with pdf.table(col_widths=widths, text_align=("LEFT",) + ("RIGHT",) * 6) as table:
        row = table.row()
        for h in heads:
            row.cell(h)
        for line in lines:
            usage = line.kind == InvoiceLine.Kind.USAGE
            row = table.row()
            row.cell(_latin1(line.description))
            row.cell(f"{line.requests:,}" if usage else "")
            row.cell(f"{line.input_tokens:,}" if usage else "")
            row.cell(f"{line.output_tokens:,}" if usage else "")
            row.cell(
                ""
                if line.input_per_mtok_usd is None
                else f"{line.input_per_mtok_usd.normalize():f}"
            )
            row.cell(
                ""
                if line.output_per_mtok_usd is None
                else f"{line.output_per_mtok_usd.normalize():f}"
            )
            row.cell(f"{line.amount_usd:,.2f}")
        for label, value in (
            ("Subtotal", invoice.subtotal_usd),
            ("SLA credits", -invoice.credits_usd),
            ("Tax", invoice.tax_usd),
            ("Total (USD)", invoice.total_usd),
        ):
            row = table.row()
            row.cell(label, colspan=6)
            row.cell(f"{value:,.2f}")
    pdf.ln(4)
    pdf.set_font("Helvetica", "I", 8)
    pdf.multi_cell(
        0,
        4,
        "Each line's amount is the exact sum of its requests' charges, rounded once, half-up "
        "to the cent. Failed and cancelled requests are charged only for the tokens the "
        "backend produced.",
    )
    return bytes(pdf.output())
