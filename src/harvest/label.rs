//! The box label: filled in by the label work.
pub struct Bilingual {
    pub zh: String,
    pub en: String,
}
pub struct LabelData {
    pub lot_id: String,
    pub url: String,
    pub product: Bilingual,
    pub grade: Bilingual,
    pub size_class: Option<String>,
    pub tss_brix: Option<f64>,
    pub net_weight_kg: f64,
    pub harvest_date: String,
    pub origin: Bilingual,
    pub commitment: Option<Bilingual>,
    pub gtin: Option<String>,
}
pub fn svg(_l: &LabelData) -> String {
    String::new()
}
pub fn png(_l: &LabelData, _dpi: u32) -> Result<Vec<u8>, String> {
    Ok(Vec::new())
}
